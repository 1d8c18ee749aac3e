"""Pieces shared by the goal-conditioned generalisation benchmarks (``goal_afids.py`` for landmarks,
``goal_plane_afids.py`` for view planes): banks with the template as the goal reference, a DQN
training loop with wall time, greedy evaluation rollouts, the DQN settings, the output options and
the JSON writer."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from jaxmed.agents.dqn import DQNConfig, greedy_action, make_train
from jaxmed.agents.rollout import greedy_rollout
from jaxmed.data import build_bank
from jaxmed.data.run_data import make_subjects, template, template_subject
from jaxmed.experiment import DataConfig


def reference_banks(data: DataConfig, labels, max_crop: int, packed: bool = False):
    """``(train_bank, test_bank, template_landmarks, summary)``: banks ``[template] + subjects`` of the
    train and test splits; the template (bank volume 0) is the goal reference the goal images are cut
    from. ``summary`` is the result's ``data`` entry (subject counts, spacing, the reference and the
    seconds this took)."""
    t0 = time.perf_counter()
    tpl = template_subject(data, labels)
    out = []
    for split, n in (("train", data.n_train), ("test", data.n_test)):
        subjects = make_subjects(data, split, n, labels)
        out.append(build_bank([tpl] + subjects, labels, factors=data.factors, max_crop=max_crop, dtype=data.dtype, packed=packed))
    tpl_landmarks = template(data)[1]
    summary = {"n_train_subjects": data.n_train, "n_test_subjects": data.n_test, "spacing_mm": data.spacing,
               "reference": "MNI152NLin2009cAsym template (AFIDs), bank volume 0", "data_prep_s": time.perf_counter() - t0}
    return out[0], out[1], tpl_landmarks, summary


def not_reference(states):
    """The states whose volume is not bank volume 0 (the template)."""
    keep = np.asarray(states.volume) != 0
    return jax.tree.map(lambda x: x[keep], states)


def dqn_config(chunks: int, n_envs: int = 16, chunk_steps: int = 100, **overrides) -> DQNConfig:
    """The benchmarks' DQN: one update per vector step, epsilon decaying over half the run."""
    kw = dict(n_envs=n_envs, chunk_steps=chunk_steps, batch_size=128, gamma=0.9, learning_rate=5e-4, learning_starts=1000,
              replay_capacity=200_000, eps_end=0.05, eps_decay_steps=max(200, chunks * chunk_steps // 2), target_update_period=500,
              double=True)
    kw.update(overrides)
    return DQNConfig(**kw)


def train(env, params, net, cfg: DQNConfig, bank, chunks: int, seed: int = 0, batch_transform=None):
    """``(network params, training wall seconds (compilation included), last chunk's metrics)``."""
    fns = make_train(cfg, env, params, net, batch_transform=batch_transform)
    t0 = time.perf_counter()
    rs = jax.jit(fns.init)(jax.random.key(seed), bank)
    chunk = jax.jit(fns.run_chunk, donate_argnums=0)
    m = {}
    for _ in range(chunks):
        rs, m = chunk(rs, bank)
    jax.block_until_ready(rs.params)
    return rs.params, time.perf_counter() - t0, {k: float(v) for k, v in m.items()}


def rollout_metrics(env, eval_params, net, net_params, bank, states):
    """``({metric: (E, A) NumPy}, seconds incl. compile)`` of the greedy policy from ``states``."""
    t0 = time.perf_counter()
    res = jax.jit(lambda p: greedy_rollout(lambda o: greedy_action(net, p, o), env, eval_params, bank, states))(net_params)
    metrics = {k: np.asarray(v) for k, v in jax.device_get(res["metrics"]).items()}
    return metrics, time.perf_counter() - t0


def writer(path: str | Path, result: dict):
    """A ``save()`` that writes ``result`` (as it is now) to ``path``: call it after every stage so
    that a killed run keeps its partial results."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out.write_text(json.dumps(result, indent=2))

    return save


def parse_args(ap: argparse.ArgumentParser, argv, out_name: str) -> argparse.Namespace:
    """Add the options every goal benchmark ends with (``--out``, default ``benchmarks/results/OUT_NAME``,
    and ``--report``) to ``ap`` and parse ``argv``."""
    ap.add_argument("--out", default=f"benchmarks/results/{out_name}")
    ap.add_argument("--report", metavar="JSON", help="print the Markdown table of a saved result and exit")
    return ap.parse_args(argv)


def print_report(path: str | Path, markdown) -> int:
    """``--report``: print ``markdown`` of the saved result at ``path``; returns the exit status 0."""
    print(markdown(json.loads(Path(path).read_text())))
    return 0
