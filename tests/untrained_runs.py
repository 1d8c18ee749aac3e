"""A run directory with untrained networks, for tests of the commands that read runs (not of learning)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import yaml


def untrained_run(run_dir: Path, config: str, *, seeds: int = 1, **env):
    """Write ``run_dir`` (``config.yaml`` + ``network.msgpack``) for the YAML ``config`` with ``env``
    keys replaced, holding ``seeds`` freshly initialised networks (stacked when ``seeds > 1``, as
    ``jaxmed train --seeds`` saves them). Returns ``(cfg, network, [params of each seed])``."""
    from jaxmed.config import load_yaml
    from jaxmed.experiment import ExperimentConfig, dummy_observation, make_env, make_network
    from jaxmed.run_files import save_network

    cfg = ExperimentConfig.from_dict(load_yaml(config))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=seeds), env={**cfg.env, **env})
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    e, _, _ = make_env(cfg)
    net = make_network(cfg, e)
    members = [net.init(jax.random.key(k), dummy_observation(cfg, e)) for k in range(seeds)]
    save_network(run_dir, members[0] if seeds == 1 else jax.tree.map(lambda *x: jnp.stack(x), *members))
    return cfg, net, members
