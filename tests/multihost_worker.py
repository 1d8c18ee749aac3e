"""One process of the 2-process localhost DQN test (run by tests/test_multihost.py, not by pytest).

Usage: ``python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR``

Joins the cluster at ``localhost:PORT``, builds a tiny phantom bank / landmark environment / patch
Q-network as tests/test_dqn.py does, runs two chunks of data-parallel DQN over every device of every
process, and writes ``OUT_DIR/params_<id>.npy`` (``(local devices, n_params)`` float32, the
flattened online parameters of each local device) and ``OUT_DIR/summary_<id>.json``.
"""

import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run(devices=None):
    """Build the tiny problem, train two chunks over ``devices`` (default: every global device) and
    return ``(params, summary)``: this process's ``(local devices, n_params)`` parameters and a dict."""
    t0 = time.time()
    import jax
    import numpy as np

    from jaxmed.agents import distributed
    from jaxmed.agents.dqn import DQNConfig
    from jaxmed.data import blob_phantom, build_bank
    from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams
    from jaxmed.networks import QNetwork

    crop = 9
    subjects = [blob_phantom(shape=(24, 24, 24), spacing=2.0, n_landmarks=2, seed=s) for s in range(4)]
    bank = build_bank(subjects, labels=("L0",), max_crop=crop, dtype="uint8")
    env = LandmarkEnv(LandmarkConfig(targets=("L0",), crop_size=crop, frames=1), labels=bank.labels)
    env_params = LandmarkParams(max_steps=20, start_radius_mm=12.0, terminate_at_target_mm=1.0)
    net = QNetwork(trunk="patch", head="q", trunk_kwargs={"patch_size": 3, "width": 0.5}, head_kwargs={"hidden": (32,)})
    cfg = DQNConfig(n_envs=4, chunk_steps=10, batch_size=8, learning_starts=16, replay_capacity=256, eps_decay_steps=50,
                    target_update_period=5)

    train = distributed.make_multihost_train(cfg, env, env_params, net, devices=devices)
    gbank = train.replicate(bank)
    rs = train.init(jax.random.key(7), gbank)
    metrics = []
    for _ in range(2):
        rs, m = train.run_chunk(rs, gbank)
        metrics.append({k: float(v) for k, v in m.items()})
    t_train = time.time() - t0

    local = distributed.local_rows(rs)
    n_local = len(local.updates)
    params = np.stack([np.concatenate([leaf[d].ravel() for leaf in jax.tree.leaves(local.params)])
                       for d in range(n_local)]).astype(np.float32)
    summary = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": n_local,
        "mesh_devices": [int(d.id) for d in train.mesh.devices.ravel()],
        "local_devices": [int(d.id) for d in train.mesh.local_devices],
        "updates": [int(u) for u in local.updates],
        "steps": [int(s) for s in local.steps],
        "env_pos": np.asarray(local.env_state.pos).tolist(),
        "env_volume": np.asarray(local.env_state.volume).tolist() if hasattr(local.env_state, "volume") else None,
        "metrics": metrics,
        "seconds": t_train,
    }
    return params, summary


def main(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
    from jaxmed.agents import distributed

    distributed.initialize(f"localhost:{port}", num_processes, process_id, initialization_timeout=90)
    import jax
    import numpy as np

    params, summary = run()
    np.save(os.path.join(out_dir, f"params_{process_id}.npy"), params)
    with open(os.path.join(out_dir, f"summary_{process_id}.json"), "w") as f:
        json.dump(summary, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    pid, n, port, out = sys.argv[1:5]
    main(int(pid), int(n), int(port), out)
