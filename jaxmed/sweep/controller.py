"""Architecture search with a reinforcement-learning controller (Zoph & Le 2016), and random search.

Zoph & Le, "Neural architecture search with reinforcement learning", 2016: a controller samples
child architectures, each child is trained briefly, its validation score is the reward, and the
controller is trained with REINFORCE and a moving-average baseline. Here:

* decisions: every ``{choice: [...]}`` parameter of the search space (``jaxmed sweep`` space files:
  trunk patch size, width, depth, kernel sizes, activation, ``network.head.name`` q / dueling, ...),
  in file order; fixed values are applied to every child; other distributions are refused.
* policy (``controller.policy``): ``"mlp"``, autoregressive: decision ``i`` is drawn from
  ``softmax(W2 tanh(W1 x_i + b1) + b2)`` over its options, ``x_i`` the one-hot of the decisions
  taken so far and of ``i`` (a small MLP in place of the paper's LSTM); ``"softmax"``, factorised:
  one logit table per decision; ``"random"``: uniform, never updated (random search).
* reward of a child: its validation metric (``-metric`` when ``mode: min``); a child that yields NaN
  gets the worst reward seen.
* update per round of ``batch`` children: ``loss = -mean_j (R_j - b) log π(a_j) - c H(π)``, Adam;
  the baseline ``b`` starts at the first round's mean reward and then follows
  ``b <- β b + (1 - β) mean_j R_j`` (``baseline_decay`` β), updated after the gradient step.
* children: a round's children are grouped by their compiled program (:mod:`jaxmed.sweep.space`:
  architectures with equal static settings share one), each group trained as one vmapped
  population (:class:`jaxmed.sweep.population.Population`) for ``chunks`` chunks, then evaluated
  greedily on the validation subjects (``metric`` of the space file).

Output directory (``jaxmed sweep CONFIG --space SPACE --method controller --out DIR``)::

    results.csv/.md   one row per child: round, decisions, metric, env steps, seconds
    best.yaml         the best child's full config (train.chunks = its budget)
    curves.png        best validation metric so far against total training env steps
    controller.json   the policy's option probabilities after every round, the baseline, rewards
    summary.json      best child, its metric, totals
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmed.config import bounded, check_fields
from jaxmed.errors import ConfigError

POLICIES = ("mlp", "softmax", "random")


@dataclasses.dataclass(frozen=True)
class ControllerSettings:
    """The ``controller:`` section of a space file.

    Attributes:
      rounds: controller updates; ``rounds * batch`` children in all.
      batch: children sampled per round.
      chunks: training chunks of every child (its budget).
      policy: ``mlp`` | ``softmax`` | ``random`` (module docstring).
      hidden: hidden units of the ``mlp`` policy.
      learning_rate: Adam step size of the controller.
      baseline_decay: ``β`` of the moving-average baseline.
      entropy: entropy bonus ``c``.
      seed: sampling seed of the controller.
    """

    rounds: int = bounded(4, 1)
    batch: int = bounded(4, 1)
    chunks: int = bounded(4, 1)
    policy: str = "mlp"
    hidden: int = bounded(32, 1)
    learning_rate: float = bounded(0.05, 0.0, low_open=True)
    baseline_decay: float = bounded(0.8, 0.0, 1.0, high_open=True)
    entropy: float = bounded(0.0, 0.0)
    seed: int = 0

    def __post_init__(self):
        check_fields(self, "controller")
        if self.policy not in POLICIES:
            raise ConfigError(f"controller.policy must be one of {POLICIES}, got {self.policy!r}")


# ------------------------------------------------------------------ the policy


@dataclasses.dataclass(frozen=True)
class Decisions:
    """The categorical decisions: ``paths`` (dotted config paths), ``options`` (values of each)."""

    paths: tuple[str, ...]
    options: tuple[tuple, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(o) for o in self.options)

    @property
    def width(self) -> int:
        return max(self.sizes)

    def mask(self) -> np.ndarray:
        """``(n, K)`` bool, the valid options of each decision."""
        return np.arange(self.width)[None, :] < np.asarray(self.sizes)[:, None]

    def values(self, actions: Sequence[int]) -> dict:
        return {p: o[int(a)] for p, o, a in zip(self.paths, self.options, actions)}


def decisions_of(params: dict) -> tuple[Decisions, dict]:
    """``(Decisions of the choice parameters, fixed values)`` of a space's ``params``;
    :class:`ConfigError` for a sampled numeric distribution (the controller only takes categorical ones)."""
    paths, options, fixed = [], [], {}
    for path, spec in params.items():
        if not isinstance(spec, dict):
            fixed[path] = spec
            continue
        kind, arg = next(iter(spec.items()))
        if kind != "choice":
            raise ConfigError(f"space.params.{path}: the controller takes {{choice: [...]}} decisions, not {kind}; "
                              f"fix the value or list the options")
        paths.append(path)
        options.append(tuple(arg))
    if not paths:
        raise ConfigError("space.params: the controller needs at least one {choice: [...]} parameter")
    return Decisions(tuple(paths), tuple(options)), fixed


def init_policy(decisions: Decisions, settings: ControllerSettings, key) -> dict:
    """Policy parameters: ``{"logits": (n, K)}`` (softmax / random, zeros: uniform) or the MLP's
    ``W1 (n K + n, H), b1, W2 (H, K), b2`` (``W2 = 0``: uniform at the start)."""
    n, k = len(decisions.paths), decisions.width
    if settings.policy != "mlp":
        return {"logits": jnp.zeros((n, k), jnp.float32)}
    h = settings.hidden
    return {"w1": jax.random.normal(key, (n * k + n, h), jnp.float32) / np.sqrt(n * k + n),
            "b1": jnp.zeros((h,), jnp.float32), "w2": jnp.zeros((h, k), jnp.float32), "b2": jnp.zeros((k,), jnp.float32)}


def _logits(params: dict, decisions: Decisions, i: int, prev) -> jax.Array:
    """``(K,)`` masked logits of decision ``i`` given the earlier actions ``prev`` ``(n,)`` (entries
    ``>= i`` ignored)."""
    n, k = len(decisions.paths), decisions.width
    valid = jnp.asarray(decisions.mask()[i])
    if "logits" in params:
        raw = params["logits"][i]
    else:
        taken = jax.nn.one_hot(prev, k) * (jnp.arange(n) < i)[:, None]
        x = jnp.concatenate([taken.reshape(-1), jax.nn.one_hot(i, n)])
        raw = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return jnp.where(valid, raw, -1e9)  # finite: -inf would make the gradients NaN


def log_prob(params: dict, decisions: Decisions, actions) -> tuple[jax.Array, jax.Array]:
    """``(log π(actions), entropy of each step's distribution summed)`` for one architecture ``(n,)``."""
    actions = jnp.asarray(actions, jnp.int32)
    total, ent = 0.0, 0.0
    for i in range(len(decisions.paths)):
        lp = jax.nn.log_softmax(_logits(params, decisions, i, actions))
        total = total + lp[actions[i]]
        p = jnp.exp(lp)
        ent = ent - jnp.sum(p * lp)
    return total, ent


def sample(params: dict, decisions: Decisions, key, n: int) -> np.ndarray:
    """``(n, d)`` int actions drawn from the policy (decision by decision)."""
    out = np.zeros((n, len(decisions.paths)), np.int32)
    for j in range(n):
        key, sub = jax.random.split(key)
        for i in range(len(decisions.paths)):
            sub, draw = jax.random.split(sub)
            out[j, i] = int(jax.random.categorical(draw, _logits(params, decisions, i, jnp.asarray(out[j]))))
    return out


def probabilities(params: dict, decisions: Decisions, actions=None) -> list[list[float]]:
    """Each decision's option probabilities (given ``actions`` for the earlier decisions; default: the
    most probable earlier options, greedily)."""
    chosen = np.zeros(len(decisions.paths), np.int32) if actions is None else np.asarray(actions, np.int32).copy()
    out = []
    for i, size in enumerate(decisions.sizes):
        p = np.asarray(jax.nn.softmax(_logits(params, decisions, i, jnp.asarray(chosen))))[:size]
        if actions is None:
            chosen[i] = int(np.argmax(p))
        out.append([float(v) for v in p])
    return out


def reinforce_loss(params, decisions: Decisions, actions, rewards, baseline, entropy: float = 0.0):
    """``-mean_j (R_j - b) log π(a_j) - c mean_j H_j`` over a batch ``actions (B, n)``, ``rewards (B,)``."""
    lp, ent = jax.vmap(lambda a: log_prob(params, decisions, a))(jnp.asarray(actions, jnp.int32))
    adv = jnp.asarray(rewards, jnp.float32) - baseline
    return -jnp.mean(adv * lp) - entropy * jnp.mean(ent)


class Controller:
    """The controller's state and update (module docstring)."""

    def __init__(self, decisions: Decisions, settings: ControllerSettings):
        self.decisions, self.settings = decisions, settings
        self.key = jax.random.key(settings.seed)
        self.key, sub = jax.random.split(self.key)
        self.params = init_policy(decisions, settings, sub)
        self.opt = optax.adam(settings.learning_rate)
        self.opt_state = self.opt.init(self.params)
        self.baseline: float | None = None
        self._grad = jax.jit(jax.grad(lambda p, a, r, b: reinforce_loss(p, decisions, a, r, b, settings.entropy)))

    def propose(self, n: int) -> np.ndarray:
        self.key, sub = jax.random.split(self.key)
        if self.settings.policy == "random":
            u = np.asarray(jax.random.uniform(sub, (n, len(self.decisions.paths))))
            return np.floor(u * np.asarray(self.decisions.sizes)).astype(np.int32)
        return sample(self.params, self.decisions, sub, n)

    def update(self, actions: np.ndarray, rewards: np.ndarray) -> None:
        """One REINFORCE step on a round, then the baseline update (no-op for the random policy)."""
        rewards = np.asarray(rewards, np.float64)
        if self.baseline is None:
            self.baseline = float(rewards.mean())
        if self.settings.policy != "random":
            grads = self._grad(self.params, jnp.asarray(actions), jnp.asarray(rewards, jnp.float32), jnp.float32(self.baseline))
            updates, self.opt_state = self.opt.update(grads, self.opt_state, self.params)
            self.params = optax.apply_updates(self.params, updates)
        b = self.settings.baseline_decay
        self.baseline = b * self.baseline + (1 - b) * float(rewards.mean())


def search(decisions: Decisions, settings: ControllerSettings, evaluate: Callable[[np.ndarray], np.ndarray],
           on_round: Callable[[int, np.ndarray, np.ndarray, Controller], None] | None = None) -> Controller:
    """The search loop: ``rounds`` times, propose ``batch`` architectures, ``evaluate(actions (B, n)) ->
    rewards (B,)`` (higher is better), update. Returns the trained controller."""
    ctrl = Controller(decisions, settings)
    worst = None
    for r in range(settings.rounds):
        actions = ctrl.propose(settings.batch)
        rewards = np.asarray(evaluate(actions), np.float64)
        finite = rewards[np.isfinite(rewards)]
        if finite.size:
            worst = finite.min() if worst is None else min(worst, finite.min())
        rewards = np.where(np.isfinite(rewards), rewards, worst if worst is not None else 0.0)
        ctrl.update(actions, rewards)
        if on_round is not None:
            on_round(r, actions, rewards, ctrl)
    return ctrl


# ------------------------------------------------------------------ the sweep driver


def split_space(data: dict, where: str = "space") -> tuple[dict, ControllerSettings]:
    """A space mapping without its ``controller:`` section, and the parsed section."""
    from jaxmed.config import build

    data = dict(data or {})
    section = data.pop("controller", None)
    return data, build(ControllerSettings, section, f"{where}.controller")


def run_controller_sweep(base: dict, space, settings: ControllerSettings, out, *, overwrite: bool = False,
                         progress: bool = True, devices: int | None = None) -> dict:
    """Architecture search on ``base`` (a config mapping) over ``space``'s choice parameters (see the
    module docstring); writes ``out`` and returns the summary."""
    from jaxmed import experiment as ex
    from jaxmed.errors import OverwriteError
    from jaxmed.sweep import cluster
    from jaxmed.sweep.runner import _Groups, _keys, markdown_table
    from jaxmed.sweep.space import make_trial, set_path

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OverwriteError(f"{out}: sweep directory exists; pass --overwrite to replace it")
        import shutil

        shutil.rmtree(out)
    if space.metric.split != "val":
        raise ConfigError("the controller is rewarded by a validation metric: set metric.split: val in the space file")
    decisions, fixed = decisions_of(space.params)
    base = ex.ExperimentConfig.from_dict(base, "base config").to_dict()
    for path, value in fixed.items():
        base = set_path(base, path, value)
    make_trial(base, decisions.values(np.zeros(len(decisions.paths), np.int32)), 0, -1)  # a bad space fails now
    groups = _Groups(base, space, cluster.sweep_devices(devices))
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    history: list[dict] = []
    sign = -1.0 if space.metric.mode == "min" else 1.0
    t0 = time.perf_counter()

    def evaluate(actions: np.ndarray) -> np.ndarray:
        rnd = len(history)
        trials = [make_trial(base, decisions.values(a), rnd, len(records) + j) for j, a in enumerate(actions)]
        metrics = np.full(len(trials), np.nan)
        for g in sorted({t.group for t in trials}):
            members = [j for j, t in enumerate(trials) if t.group == g]
            pop = groups.population(trials[members[0]])
            ts = [trials[j] for j in members]
            state = pop.init(_keys(ts, space.common_seed), pop.hparams([t.config for t in ts]))
            state, _, seconds = pop.run(state, settings.chunks)
            values, eval_s = pop.evaluate(state, space.metric.name)
            for row, j in enumerate(members):
                metrics[j] = values[row]
                records.append({"id": trials[j].id, "round": rnd, "values": trials[j].values, "actions": actions[j].tolist(),
                                "metric": None if np.isnan(values[row]) else float(values[row]),
                                "env_steps": settings.chunks * pop.env_steps_per_chunk,
                                "seconds": (seconds + eval_s) / len(members), "config": trials[j].config})
                if progress:
                    print(f"round {rnd} child {trials[j].id:>3} {space.metric.name} = {values[row]:.3f}  {trials[j].values}", flush=True)
        records.sort(key=lambda r: r["id"])
        return sign * metrics

    def on_round(r, actions, rewards, ctrl):
        history.append({"round": r, "rewards": rewards.tolist(), "baseline": ctrl.baseline,
                        "probabilities": probabilities(ctrl.params, decisions)})

    search(decisions, settings, evaluate, on_round)
    wall = time.perf_counter() - t0
    return _write(out, base, space, settings, decisions, records, history, wall, markdown_table)


def best_so_far(records: list[dict], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(cumulative env steps (C,), best metric so far (C,))`` over the children in order."""
    steps = np.cumsum([r["env_steps"] for r in records]).astype(np.float64)
    vals = np.array([np.nan if r["metric"] is None else r["metric"] for r in records], np.float64)
    best = np.fmin.accumulate(vals) if mode == "min" else np.fmax.accumulate(vals)
    return steps, best


def _write(out: Path, base, space, settings, decisions, records, history, wall, markdown_table) -> dict:
    import csv

    import yaml

    mode = space.metric.mode
    scored = [r for r in records if r["metric"] is not None]
    best = (min if mode == "min" else max)(scored, key=lambda r: r["metric"]) if scored else None
    header = ["child", "round", *decisions.paths, space.metric.name, "env_steps", "seconds"]
    rows = [[r["id"], r["round"], *[r["values"][p] for p in decisions.paths], r["metric"], r["env_steps"], round(r["seconds"], 3)]
            for r in records]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    (out / "results.md").write_text(markdown_table(header, rows, best["id"] if best else None) + "\n")
    summary = {"method": f"controller ({settings.policy})", "metric": space.metric.name, "split": space.metric.split,
               "mode": mode, "children": len(records), "env_steps": int(sum(r["env_steps"] for r in records)), "wall_s": wall,
               "settings": dataclasses.asdict(settings)}
    if best is not None:
        cfg = best["config"]
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, chunks=settings.chunks))
        (out / "best.yaml").write_text(f"# best child {best['id']} of the controller search in {out.name}/: "
                                       f"{space.metric.name} (val) = {best['metric']}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        summary.update(best_child=best["id"], best_values=best["values"], best_metric=best["metric"])
    steps, curve = best_so_far(records, mode)
    summary["curve"] = {"env_steps": steps.tolist(), "best": [None if np.isnan(v) else float(v) for v in curve]}
    (out / "controller.json").write_text(json.dumps({"decisions": {p: list(o) for p, o in zip(decisions.paths, decisions.options)},
                                                     "rounds": history}, indent=1, default=str))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    plot_best_so_far({f"controller ({settings.policy})": (steps, curve)}, space.metric.name, mode, out / "curves.png")
    return summary


def plot_best_so_far(curves: dict, metric: str, mode: str, path: Path, title: str = "") -> None:
    """Best validation metric so far against total training env steps, one line per method:
    ``curves = {name: (env_steps (C,), best (C,))}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    for name, (x, y) in curves.items():
        ax.step(x, y, where="post", marker="o", ms=3, label=name)
    ax.set_xlabel("total training env steps (all children)")
    ax.set_ylabel(f"best {metric} so far (val)")
    if mode == "min" and all(np.nanmin(y) > 0 for _, y in curves.values() if np.isfinite(y).any()):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
