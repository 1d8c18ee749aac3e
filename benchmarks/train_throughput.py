"""End-to-end DQN training throughput: environment steps/s and updates/s of the whole training program.

For each network configuration (default: the CPU configuration, patch-embedding trunk, 4 frames, crops
45³ and 15³) and each number of parallel environments ``n`` (1, 64, 1024; capped by time), this
measures in one process on one device:

* **jaxmed**: ``run_chunk`` of :func:`jaxmed.agents.dqn.make_train`, i.e. one jitted program that
  scans ``chunk_steps`` vector steps of: epsilon-greedy acting (Q-network forward on the ``n``
  current observations), ``vmap(env.step)`` with auto-reset, insertion of ``n`` state transitions
  into the device replay, sampling a batch, re-rendering its observations from the volume bank, one
  TD update (target + online forward/backward + Adam) and the target copy. One update per vector
  step (``updates_per_step = 1``), so updates/s = env-steps/s / ``n``. Compilation
  (``lower().compile()``) is timed separately; one warm-up call; median of repeated calls.
* **python loop**: the same training loop written step by step, as the published TF1/PyTorch code
  does it: ``n`` :class:`jaxmed.envs.reference.ReferenceLandmarkEnv` (NumPy) stepped one after the
  other on the host, reset by the caller when an episode ends; a host NumPy ring replay of stacked
  uint8 frame observations (pixels: ``obs`` and ``next_obs``, ``2 k D³`` bytes per transition); an
  epsilon-greedy acting forward of the same network, jitted, on the host-stacked batch of ``n``
  observations; a separately jitted update of the same network, optimiser and loss
  (:func:`jaxmed.agents.dqn.td_loss`, :func:`jaxmed.agents.dqn.make_optimizer`) on a batch
  gathered on the host, once per vector step (the same update frequency and batch size), with a
  host-side target copy. Each phase is timed inline.

Where the time goes (per vector step, in ms): for jaxmed, separately jitted pieces with the same
shapes: the environment alone (``jit(scan(vmap(env.step)))`` with random actions, from
``env_throughput.make_rollout``), the acting forward alone (one jitted call on ``(n, 1, k, D, D, D)``),
the replay sample + re-render of ``2 B`` observations alone, and the whole update alone (sample +
re-render + TD update + Adam, ``lax.scan`` over a few updates); for the python loop, the inline
phase timers (acting forward incl. host/device transfer, env steps incl. resets, replay insert,
replay sample, update incl. transfer).

Bank: the AFIDs MNI template at 2 mm (97 x 115 x 97), repeated ``--n-volumes`` times, uint8,
target "AC", random starts in the central 80 % of the volume, ``LandmarkParams()`` defaults.
The replay starts learning at once (``learning_starts = 1``), so every timed step trains.
``--trunk network3d`` measures the published network (slow on CPU: fewer envs, one update per call).

Usage::

    python benchmarks/train_throughput.py [--quick] [--out benchmarks/results/train_throughput.json]

Writes the JSON, a PNG plot beside it, and prints a Markdown table.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compile_timed, machine_info, machine_line, parser, replot_or_run, rows_markdown, save_figure, timed  # noqa: E402
from env_throughput import initial, make_rollout  # noqa: E402  (shared benchmark helpers)

from jaxmed.agents.dqn import DQNConfig, make_optimizer, make_train, td_loss  # noqa: E402
from jaxmed.agents.replay import ReplayBuffer  # noqa: E402
from jaxmed.data import afids  # noqa: E402
from jaxmed.data.bank import build_bank  # noqa: E402
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkObsState, LandmarkParams  # noqa: E402
from jaxmed.envs.reference import ReferenceLandmarkEnv  # noqa: E402
from jaxmed.networks import QNetwork  # noqa: E402

TARGET = "AC"


@dataclasses.dataclass(frozen=True)
class Case:
    """One network configuration: trunk, crop edge ``D`` and frames ``k``."""

    trunk: str
    crop: int
    frames: int = 4

    @property
    def name(self) -> str:
        return f"{self.trunk} D={self.crop} k={self.frames}"

    def network(self) -> QNetwork:
        return QNetwork(trunk=self.trunk, head="q")

    def env(self, labels) -> LandmarkEnv:
        return LandmarkEnv(LandmarkConfig(targets=(TARGET,), crop_size=self.crop, frames=self.frames), labels=labels)


def cases(trunk: str, crops) -> list[Case]:
    if trunk == "network3d":
        crops = [c for c in crops if c >= 34] or [45]  # the published network needs >= 34³
    return [Case(trunk, c) for c in crops]


def dqn_config(args, n_envs: int, chunk_steps: int) -> DQNConfig:
    """The learner's settings: one update per vector step, learning from the first step."""
    return DQNConfig(n_envs=n_envs, chunk_steps=chunk_steps, batch_size=args.batch_size, replay_capacity=args.replay_capacity,
                     learning_starts=1, updates_per_step=1, double=True, target_update_period=500)

# ------------------------------------------------------------------ timing helpers


def timed_calls(call, min_time: float, min_reps: int, max_reps: int, max_total: float) -> tuple[float, int]:
    """Median seconds of ``call()`` (which must block), after one untimed warm-up call (:func:`jaxmed.bench.timed`)."""
    return timed(call, min_time, min_reps, max_reps, max_total=max_total)

# ------------------------------------------------------------------ jaxmed: pieces and the whole program


def filled_buffer(env: LandmarkEnv, env_params, bank, buffer, n: int, seed: int = 1):
    """``buffer`` with ``n`` transitions, shaped like the learner's own (whatever its fields): every
    observation state comes from a random reset (what is stored does not change the cost, but real
    positions make the re-render read real, different crops); booleans are True, numbers 0."""
    states = jax.jit(lambda keys: jax.vmap(env.reset, in_axes=(0, None, None))(keys, env_params, bank)[1])(
        jax.random.split(jax.random.key(seed), n))
    obs_state = jax.vmap(env.obs_state)(states)

    def leaf(x):
        if isinstance(x, LandmarkObsState):
            return jax.tree.map(lambda s, b: s.astype(b.dtype), obs_state, x)
        fill = jnp.ones if x.dtype == jnp.bool_ else jnp.zeros
        return fill((n,) + x.shape[1:], x.dtype)

    trans = jax.tree.map(leaf, buffer.data, is_leaf=lambda x: isinstance(x, LandmarkObsState))
    return jax.jit(ReplayBuffer.add_batch)(buffer, trans)


def make_update_scan(config: DQNConfig, env: LandmarkEnv, network, n_updates: int):
    """``jit(updates(params, target, opt_state, buffer, key, bank) -> (params, opt_state, losses))``:
    ``n_updates`` DQN updates back to back (sample, re-render, TD loss and gradient, Adam), the same
    computation as the learner's update, without acting or stepping."""
    optimizer = make_optimizer(config)
    v_render = jax.vmap(env.render, in_axes=(0, None))
    grad_fn = jax.value_and_grad(td_loss, argnums=1, has_aux=True)

    def updates(params, target, opt_state, buffer, key, bank):
        def body(carry, k):
            params, opt_state = carry
            batch = ReplayBuffer.sample(buffer, k, config.batch_size)
            obs, next_obs = v_render(batch["obs_state"], bank), v_render(batch["next_obs_state"], bank)
            (loss, _), grads = grad_fn(network, params, target, obs, next_obs, batch, config.gamma, config.double, config.huber_delta)
            upd, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, n_updates))
        return params, opt_state, losses

    return jax.jit(updates)


def make_render_scan(config: DQNConfig, env: LandmarkEnv, n_reps: int):
    """``jit(render(buffer, key, bank) -> (obs, next_obs))``: ``n_reps`` replay samples of a batch and
    the re-render of their ``2 B`` observations, each written into the loop carry."""
    v_render = jax.vmap(env.render, in_axes=(0, None))

    def render(buffer, key, bank):
        def one(k):
            batch = ReplayBuffer.sample(buffer, k, config.batch_size)
            return v_render(batch["obs_state"], bank), v_render(batch["next_obs_state"], bank)

        keys = jax.random.split(key, n_reps)
        return jax.lax.fori_loop(1, n_reps, lambda i, _: one(keys[i]), one(keys[0]))

    return jax.jit(render)


def jax_pieces(case: Case, env, env_params, bank, network, rs, config: DQNConfig, n: int, args) -> dict:
    """Per-vector-step milliseconds of the separately jitted pieces, and their compile seconds."""
    out: dict = {}
    timing = dict(min_time=args.piece_time, min_reps=args.min_reps, max_reps=50, max_total=args.max_piece_total)
    # environment alone: random policy, auto-reset, observations written (env_throughput's rollout)
    env_steps = args.env_scan_steps
    key, state, obs = initial(env, n, env_params, bank)
    roll, out["env_compile_s"] = compile_timed(make_rollout(env, n, env_steps), key, state, obs, env_params, bank)
    carry = [key, state, obs]

    def env_call():
        k, s, o, _ = jax.block_until_ready(roll(carry[0], carry[1], carry[2], env_params, bank))
        carry[:] = [k, s, o]

    sec, _ = timed_calls(env_call, **timing)
    out["env_ms"] = 1e3 * sec / env_steps
    del state, obs  # (the carry list stays: env_call closes over it)
    # acting forward alone (one call; includes the ~tens of µs dispatch of a jitted call)
    fwd, out["act_compile_s"] = compile_timed(jax.jit(network.apply), rs.params, rs.obs)
    sec, _ = timed_calls(lambda: jax.block_until_ready(fwd(rs.params, rs.obs)), **timing)
    out["act_ms"] = 1e3 * sec
    # replay sample + re-render alone, and the whole update alone (sample + re-render + TD update + Adam)
    buffer = filled_buffer(env, env_params, bank, rs.buffer, min(config.replay_capacity, args.fill))
    n_upd = args.update_scan
    rend, out["render_compile_s"] = compile_timed(make_render_scan(config, env, n_upd), buffer, jax.random.key(2), bank)
    sec, _ = timed_calls(lambda: jax.block_until_ready(rend(buffer, jax.random.key(2), bank)), **timing)
    out["sample_render_ms"] = 1e3 * sec / n_upd
    # (the learner's own optimiser state is that of make_direction with the learning rate in its Hparams;
    # the same Adam step with the config's learning rate is make_optimizer's)
    opt_state = make_optimizer(config).init(rs.params)
    upd, out["update_compile_s"] = compile_timed(make_update_scan(config, env, network, n_upd), rs.params, rs.target_params,
                                                 opt_state, buffer, jax.random.key(3), bank)
    ukey = [jax.random.key(3)]

    def upd_call():
        ukey[0], k = jax.random.split(ukey[0])
        jax.block_until_ready(upd(rs.params, rs.target_params, opt_state, buffer, k, bank))

    sec, _ = timed_calls(upd_call, **{**timing, "min_reps": 1 if args.trunk == "network3d" else args.min_reps})
    out["update_ms"] = 1e3 * sec / n_upd
    return out


def time_jaxmed(case: Case, env, env_params, bank, n: int, args) -> dict:
    """The whole training program (``run_chunk``) and its pieces for ``n`` parallel environments."""
    network = case.network()
    probe = dqn_config(args, n, 1)
    rs = jax.jit(make_train(probe, env, env_params, network).init)(jax.random.key(0), bank)
    pieces = jax_pieces(case, env, env_params, bank, network, rs, probe, n, args)
    predicted_step = (pieces["env_ms"] + pieces["act_ms"] + pieces["update_ms"]) / 1e3
    chunk_steps = int(np.clip(math.ceil(args.chunk_time / predicted_step), 1, args.max_chunk_steps))
    row = {**pieces, "chunk_steps": chunk_steps, "predicted_vector_step_ms": 1e3 * predicted_step}
    if predicted_step * chunk_steps > args.max_call_s:
        return {**row, "skipped": f"time cap (predicted {predicted_step * chunk_steps:.0f} s per chunk > {args.max_call_s:.0f} s)"}
    config = dqn_config(args, n, chunk_steps)
    # the same program that never learns (learning_starts above the capacity): act + env step + replay insert
    no_learn = dataclasses.replace(config, learning_starts=config.replay_capacity + 1)
    if not args.no_actor_program:
        sec, steps, _, c = time_run_chunk(no_learn, env, env_params, bank, network, min(args.min_time, 1.0), args)
        row.update({"actor_program_ms": 1e3 * sec / steps, "actor_program_compile_s": c})
    sec, vec_steps, updates, row["compile_s"] = time_run_chunk(config, env, env_params, bank, network, args.min_time, args, row)
    row.update({
        "env_steps_per_s": vec_steps * n / sec, "updates_per_s": updates / sec,
        "seconds_per_update": sec / max(updates, 1), "vector_step_ms": 1e3 * sec / vec_steps,
    })
    row["other_ms"] = row["vector_step_ms"] - (row["env_ms"] + row["act_ms"] + row["update_ms"])
    if "actor_program_ms" in row:
        row["update_in_program_ms"] = (row["vector_step_ms"] - row["actor_program_ms"]) * vec_steps / max(updates, 1)
    return row


def time_run_chunk(config: DQNConfig, env, env_params, bank, network, min_time: float, args, row: dict | None = None):
    """``(seconds, vector steps, updates, compile seconds)`` of timed ``run_chunk`` calls (median call
    time times the number of calls) after one warm-up call, which also fills the replay."""
    fns = make_train(config, env, env_params, network)
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    if row is not None:
        row["replay_bytes_per_transition"] = ReplayBuffer.bytes_per_transition(jax.tree.map(lambda x: x[0], rs.buffer.data))
    chunk, compile_s = compile_timed(jax.jit(fns.run_chunk, donate_argnums=0), rs, bank)
    holder = [rs]

    def call():
        holder[0], m = chunk(holder[0], bank)
        jax.block_until_ready(m)

    call()  # warm-up
    u0, s0 = int(holder[0].updates), int(holder[0].steps)
    times: list[float] = []
    while len(times) < args.min_reps or (sum(times) < min_time and len(times) < args.max_reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    rs = holder[0]
    if row is not None:
        row.update({"seconds_per_chunk": float(np.median(times)), "repeats": len(times)})
    return float(np.median(times)) * len(times), int(rs.steps) - s0, int(rs.updates) - u0, compile_s

# ------------------------------------------------------------------ the step-by-step Python loop


class HostReplay:
    """A NumPy ring buffer of pixel transitions, as the published implementations keep: stacked
    frames ``obs`` and ``next_obs`` ``(A, k, D, D, D)`` in the bank's dtype, action, reward, flags."""

    def __init__(self, capacity: int, obs_shape, dtype, n_agents: int):
        self.capacity = int(capacity)
        self.obs = np.zeros((self.capacity, *obs_shape), dtype)
        self.next_obs = np.zeros_like(self.obs)
        self.action = np.zeros((self.capacity, n_agents), np.int32)
        self.reward = np.zeros((self.capacity, n_agents), np.float32)
        self.terminal = np.zeros((self.capacity, n_agents), bool)
        self.pos = 0
        self.size = 0

    @property
    def bytes_per_transition(self) -> int:
        return sum(a[0].nbytes for a in (self.obs, self.next_obs, self.action, self.reward, self.terminal))

    def add(self, obs, action, reward, next_obs, terminal) -> None:
        i = self.pos
        self.obs[i], self.next_obs[i], self.action[i], self.reward[i], self.terminal[i] = obs, next_obs, action, reward, terminal
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict:
        idx = rng.integers(0, self.size, batch)
        return {"obs": self.obs[idx], "next_obs": self.next_obs[idx], "action": self.action[idx], "reward": self.reward[idx],
                "terminal": self.terminal[idx], "valid": np.ones_like(self.terminal[idx])}


def make_host_update(config: DQNConfig, network):
    """``jit(update(params, target, opt_state, batch) -> (params, opt_state, loss))``: one TD update of
    the same loss and optimiser as the learner, on a host batch of pixel observations."""
    optimizer = make_optimizer(config)
    grad_fn = jax.value_and_grad(td_loss, argnums=1, has_aux=True)

    def update(params, target, opt_state, batch):
        (loss, _), grads = grad_fn(network, params, target, batch["obs"], batch["next_obs"], batch, config.gamma, config.double,
                                   config.huber_delta)
        upd, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    return jax.jit(update), optimizer


def time_python_loop(case: Case, env_cfg: LandmarkConfig, env_params, bank, n: int, args) -> dict:
    """``n`` NumPy reference envs, host pixel replay and per-step jitted acting / update, for about
    ``args.py_time`` seconds (at least ``args.py_min_steps`` vector steps after one warm-up step)."""
    config = dqn_config(args, n, 1)
    network = case.network()
    rng = np.random.default_rng(0)
    envs = [ReferenceLandmarkEnv(env_cfg, env_params, bank) for _ in range(n)]
    obs = np.stack([e.reset(rng) for e in envs])  # (n, A, k, D, D, D)
    n_agents = envs[0].n_agents
    obs_bytes = obs[0].nbytes * 2
    capacity = int(max(args.batch_size, min(args.replay_capacity, args.py_replay_gb * 1e9 // obs_bytes)))
    replay = HostReplay(capacity, obs.shape[1:], obs.dtype, n_agents)
    params = network.init(jax.random.key(0), jnp.asarray(obs[:1]))
    update, optimizer = make_host_update(config, network)
    opt_state = optimizer.init(params)
    target = params
    fwd, c_act = compile_timed(jax.jit(network.apply), params, jnp.asarray(obs))
    example = {  # the shapes of a sampled batch
        "obs": np.zeros((args.batch_size, *obs.shape[1:]), obs.dtype), "next_obs": np.zeros((args.batch_size, *obs.shape[1:]), obs.dtype),
        "action": np.zeros((args.batch_size, n_agents), np.int32), "reward": np.zeros((args.batch_size, n_agents), np.float32),
        "terminal": np.zeros((args.batch_size, n_agents), bool), "valid": np.ones((args.batch_size, n_agents), bool)}
    update, c_upd = compile_timed(update, params, target, opt_state, example)
    phases = dict.fromkeys(("act", "env", "insert", "sample", "update"), 0.0)
    steps = updates = 0
    eps_span = max(config.eps_decay_steps, 1)

    def vector_step(clock: dict):
        nonlocal params, opt_state, target, steps, updates  # obs is updated in place
        t0 = time.perf_counter()
        q = np.asarray(fwd(params, jnp.asarray(obs)))  # (n, A, 6)
        eps = config.eps_start + min(steps / eps_span, 1.0) * (config.eps_end - config.eps_start)
        actions = np.where(rng.random(q.shape[:-1]) < eps, rng.integers(0, 6, q.shape[:-1]), q.argmax(-1))
        clock["act"] += time.perf_counter() - t0
        for i, e in enumerate(envs):
            t1 = time.perf_counter()
            next_obs, reward, terminated, truncated, _ = e.step(actions[i])
            t2 = time.perf_counter()
            replay.add(obs[i], actions[i], reward, next_obs, np.full(n_agents, terminated))
            t3 = time.perf_counter()
            obs[i] = e.reset(rng) if (terminated or truncated) else next_obs
            t4 = time.perf_counter()
            clock["env"] += (t2 - t1) + (t4 - t3)
            clock["insert"] += t3 - t2
        steps += 1
        if replay.size >= config.learning_starts:
            t5 = time.perf_counter()
            batch = replay.sample(rng, config.batch_size)
            t6 = time.perf_counter()
            params, opt_state, loss = update(params, target, opt_state, batch)
            jax.block_until_ready(loss)
            updates += 1
            if updates % config.target_update_period == 0:
                target = jax.tree.map(jnp.copy, params)
            clock["sample"] += t6 - t5
            clock["update"] += time.perf_counter() - t6

    vector_step(dict.fromkeys(phases, 0.0))  # warm-up (first-call overheads)
    steps0, updates0 = steps, updates
    t0 = time.perf_counter()
    while (steps - steps0 < args.py_min_steps or time.perf_counter() - t0 < args.py_time):
        vector_step(phases)
    sec = time.perf_counter() - t0
    vec = steps - steps0
    row = {"compile_s": c_act + c_upd, "act_compile_s": c_act, "update_compile_s": c_upd, "vector_steps": vec, "seconds": sec,
           "env_steps_per_s": vec * n / sec, "updates_per_s": (updates - updates0) / sec,
           "seconds_per_update": sec / max(updates - updates0, 1), "vector_step_ms": 1e3 * sec / vec,
           "replay_capacity": capacity, "replay_bytes_per_transition": replay.bytes_per_transition}
    row.update({f"{k}_ms": 1e3 * v / vec for k, v in phases.items()})
    row["other_ms"] = row["vector_step_ms"] - sum(row[f"{k}_ms"] for k in phases)
    return row

# ------------------------------------------------------------------ the sweep


def run(args) -> dict:
    info = machine_info()
    print(f"# machine: {info['cpu']}, {info['cores']} cores, {info['device']}, jax {info['jax']}, "
          f"load avg {info['load_avg_1m_at_start']:.2f}", flush=True)
    subject = afids.load(spacing=args.spacing)
    the_cases = cases(args.trunk, args.crops)
    bank = build_bank([subject] * args.n_volumes, labels=(TARGET,), factors=(1,), max_crop=max(c.crop for c in the_cases),
                      dtype=args.dtype)
    env_params = LandmarkParams()
    print(HEADER, flush=True)
    rows = []
    t_start = time.perf_counter()
    for case in the_cases:
        env = case.env(bank.labels)
        for n in args.n_envs:
            base = {"config": case.name, "trunk": case.trunk, "crop": case.crop, "frames": case.frames, "n_envs": n,
                    "batch_size": args.batch_size, "load_avg_1m": os.getloadavg()[0]}
            if time.perf_counter() - t_start > args.budget_s:
                rows.append({**base, "impl": "jaxmed", "skipped": f"overall time budget ({args.budget_s:.0f} s) spent"})
                continue
            row = {**base, "impl": "jaxmed", **time_jaxmed(case, env, env_params, bank, n, args)}
            rows.append(row)
            print(format_row(row), flush=True)
            if n in args.py_envs:
                prow = {**base, "impl": "python loop", **time_python_loop(case, env.config, env_params, bank, n, args)}
                if "env_steps_per_s" in row:
                    prow["jaxmed_speedup"] = row["env_steps_per_s"] / prow["env_steps_per_s"]
                rows.append(prow)
                print(format_row(prow), flush=True)
    info["load_avg_1m_at_end"] = os.getloadavg()[0]
    return {
        "machine": info,
        "settings": {
            "bank": f"AFIDs MNI152NLin2009cAsym T1 template at {args.spacing} mm, x{args.n_volumes} volumes, {args.dtype}, target {TARGET}",
            "level0_shape": [int(s) for s in np.asarray(bank.shapes)[0, 0]],
            "network": f"QNetwork(trunk={args.trunk!r}, head='q'), default trunk options",
            "dqn": {k: v for k, v in dataclasses.asdict(dqn_config(args, 1, 1)).items() if k not in ("n_envs", "chunk_steps")},
            "updates": "one per vector step (n env-steps) in both loops; learning from the first step",
            "env_params": {f.name: float(getattr(env_params, f.name)) for f in dataclasses.fields(env_params)},
            "n_envs": args.n_envs, "python_loop_n_envs": args.py_envs, "chunk_time_s": args.chunk_time,
            "min_time_s": args.min_time, "py_time_s": args.py_time, "py_replay_gb": args.py_replay_gb,
            "max_call_s": args.max_call_s, "quick": args.quick,
        },
        "rows": rows,
    }

# ------------------------------------------------------------------ output


def _fmt(x, digits=3):
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


HEADER = (
    "| config | loop | n envs | env-steps/s | updates/s | s / update | compile s | ms / vector step "
    "| env | act fwd | update (jaxmed: sample+re-render+TD+Adam) | replay (python: insert+sample; jaxmed: of which sample+re-render) "
    "| other | jaxmed in program: act+env+insert / update | jaxmed speed-up |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r) -> str:
    head = f"| {r['config']} | {r['impl']} | {r['n_envs']} |"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']} |" + " |" * 11
    if r["impl"] == "jaxmed":
        replay = r.get("sample_render_ms")
    else:
        replay = r["insert_ms"] + r["sample_ms"]
    speed = f"{_fmt(r['jaxmed_speedup'], 2)}×" if r.get("jaxmed_speedup") else "—"
    in_prog = f"{_fmt(r['actor_program_ms'])} / {_fmt(r['update_in_program_ms'])}" if "actor_program_ms" in r else "—"
    return (
        f"{head} {_fmt(r['env_steps_per_s'])} | {_fmt(r['updates_per_s'])} | {_fmt(r['seconds_per_update'])} | {r['compile_s']:.1f} | "
        f"{_fmt(r['vector_step_ms'])} | {_fmt(r['env_ms'])} | {_fmt(r['act_ms'])} | {_fmt(r['update_ms'])} | {_fmt(replay)} | "
        f"{_fmt(r['other_ms'])} | {in_prog} | {speed} |"
    )


def markdown(result) -> str:
    m, s = result["machine"], result["settings"]
    intro = (f"load avg (1 min) {m['load_avg_1m_at_start']:.2f} at start, {m['load_avg_1m_at_end']:.2f} at end. Bank: {s['bank']}. "
             f"Network: {s['network']}; batch {s['dqn']['batch_size']}, {s['updates']}. "
             "Times per vector step (one step of all n envs) in ms; "
             "jaxmed pieces are separately jitted programs with the same shapes, python-loop phases are timed inline.")
    return rows_markdown(m, intro, HEADER, result["rows"], format_row, lambda r: f"{r['config']} {r['impl']} n={r['n_envs']}")


def plot(result, path: Path) -> None:
    """Left: env-steps/s against parallel envs (log-log), jaxmed solid, python loop dashed. Right: where
    the time of one vector step goes (fraction per phase), per config, loop and n; for jaxmed from the
    in-program figures (the same program without updates, and the difference) where they exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "skipped" not in r and r.get("env_steps_per_s")]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [1, 1.3]})
    for i, cfg in enumerate(configs):
        for impl, style in (("jaxmed", "-o"), ("python loop", "--x")):
            rr = [r for r in rows if r["config"] == cfg and r["impl"] == impl]
            if rr:
                ax.plot([r["n_envs"] for r in rr], [r["env_steps_per_s"] for r in rr], style, color=f"C{i}", ms=5, label=f"{impl}, {cfg}")
    ax.axhline(9.0, color="grey", lw=1, ls=":", label="published reference training loop (9 env-steps/s)")
    ax.set(xscale="log", yscale="log", xlabel="parallel environments n",
           ylabel="environment steps / s (training, 1 update per vector step)",
           title="DQN training throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    labels = []
    colors = {"env": "C0", "act fwd": "C1", "update": "C2", "replay": "C3", "other": "C7"}
    bars = {k: [] for k in colors}
    for r in rows:
        total = r["vector_step_ms"]
        parts = {"env": r["env_ms"], "act fwd": r["act_ms"], "update": r["update_ms"],
                 "replay": r.get("insert_ms", 0.0) + r.get("sample_ms", 0.0)}
        if r.get("actor_program_ms") is not None and r.get("update_in_program_ms") is not None:
            # jaxmed, in program: env piece, (act + insert) = the no-update program minus the env, update = the rest
            steps_per_update = r["env_steps_per_s"] / r["n_envs"] / max(r["updates_per_s"], 1e-12)
            parts = {"env": min(r["env_ms"], r["actor_program_ms"]), "act fwd": max(r["actor_program_ms"] - r["env_ms"], 0.0),
                     "update": max(r["update_in_program_ms"], 0.0) / steps_per_update, "replay": 0.0}
        parts["other"] = max(total - sum(parts.values()), 0.0)
        norm = max(total, sum(parts.values()))
        for k in colors:
            bars[k].append(100 * parts[k] / norm)
        labels.append(f"{'jax' if r['impl'] == 'jaxmed' else 'py'} D={r['crop']} n={r['n_envs']}")
    x = np.arange(len(labels))
    bottoms = np.zeros(len(labels))
    for k, c in colors.items():
        bx.bar(x, bars[k], bottom=bottoms, color=c, label=k)
        bottoms += np.array(bars[k])
    bx.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    bx.set(ylabel="% of a vector step", title="where the time goes (jaxmed: env piece, program without updates, rest = update;\n"
                                             "python: inline timers; act fwd includes the replay insert for jaxmed)")
    bx.legend(fontsize=7)
    m = result["machine"]
    save_figure(fig, path, f"jaxmed DQN on AFIDs 2 mm, {result['settings']['network']} — {machine_line(m)}, "
                           f"load {m['load_avg_1m_at_start']:.1f}")


def parse_args(argv=None):
    p = parser(__doc__, "train_throughput.json", min_time=3.0, min_reps=2, max_reps=20, max_call_s=30.0, n_volumes=4,
               quick_help="few env counts, short timing (smoke test)")
    p.add_argument("--trunk", default="patch", choices=["patch", "strided", "network3d"], help="Q-network trunk")
    p.add_argument("--crops", type=int, nargs="+", default=[45, 15], help="crop edges D (patch trunk: multiples of 15)")
    p.add_argument("--n-envs", type=int, nargs="+", default=[1, 64, 1024], help="parallel environments n")
    p.add_argument("--py-envs", type=int, nargs="+", default=None, help="n for which the python loop runs too (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--replay-capacity", type=int, default=100_000)
    p.add_argument("--dtype", default="uint8", choices=["float32", "bfloat16", "uint8"], help="bank storage dtype")
    p.add_argument("--chunk-time", type=float, default=1.5, help="target seconds per run_chunk call (sets chunk_steps)")
    p.add_argument("--max-chunk-steps", type=int, default=64)
    p.add_argument("--piece-time", type=float, default=0.5, help="seconds of timed calls per jitted piece")
    p.add_argument("--max-piece-total", type=float, default=4.0)
    p.add_argument("--env-scan-steps", type=int, default=8, help="steps per env-alone rollout call")
    p.add_argument("--update-scan", type=int, default=4, help="updates per update-alone call")
    p.add_argument("--fill", type=int, default=4096, help="transitions put in the replay for the update-alone timing")
    p.add_argument("--py-time", type=float, default=5.0, help="seconds of python-loop training per point")
    p.add_argument("--py-min-steps", type=int, default=2, help="at least this many timed python-loop vector steps")
    p.add_argument("--py-replay-gb", type=float, default=1.5, help="memory of the python loop's pixel replay (caps its capacity)")
    p.add_argument("--no-actor-program", action="store_true", help="skip timing run_chunk without updates")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip remaining points once this many seconds have passed")
    args = p.parse_args(argv)
    if args.trunk == "network3d":  # ~30 s per update and ~0.15 s per acting forward on this CPU
        args.n_envs = [n for n in args.n_envs if n <= 64] or [1]
        args.max_chunk_steps, args.update_scan, args.min_reps, args.min_time = 1, 1, 1, 0.0
        args.py_min_steps, args.py_time, args.max_call_s = 1, 0.0, max(args.max_call_s, 120.0)
        args.piece_time, args.fill = 0.0, 512
    if args.quick:
        args.n_envs = [n for n in args.n_envs if n <= 64] or [1]
        args.min_time, args.piece_time, args.py_time, args.chunk_time = 0.5, 0.2, 1.0, 0.5
        args.n_volumes, args.fill, args.py_replay_gb = 2, 512, 0.3
    if args.py_envs is None:
        args.py_envs = list(args.n_envs)
    return args


def main(argv=None) -> dict:
    return replot_or_run(run, parse_args(argv), plot, markdown)


if __name__ == "__main__":
    main()
