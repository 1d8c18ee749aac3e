"""Multi-host data-parallel DQN: 2 processes x 2 CPU devices on localhost via jax.distributed (Gloo).

The workers (tests/multihost_worker.py) run two chunks of training over the 4 global devices; the
pytest process runs the same training single-process over 4 local devices as a reference.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from multiprocess import run_python_workers

WORKER = Path(__file__).with_name("multihost_worker.py")
N_PROCESSES = 2
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("multihost")
    run_python_workers(WORKER, N_PROCESSES, out_dir, timeout_s=TIMEOUT_S)
    params = [np.load(out_dir / f"params_{i}.npy") for i in range(N_PROCESSES)]
    summaries = [json.loads((out_dir / f"summary_{i}.json").read_text()) for i in range(N_PROCESSES)]
    return params, summaries


def test_two_processes_train_one_model(worker_results):
    params, summaries = worker_results
    for i, s in enumerate(summaries):
        assert s["process_index"] == i and s["process_count"] == 2
        assert s["device_count"] == 4 and s["local_device_count"] == 2
        assert min(s["updates"]) > 0 and len(set(s["updates"])) == 1
        assert np.isfinite(s["metrics"][-1]["loss"])
    assert summaries[0]["updates"] == summaries[1]["updates"]
    # one global mesh, the same in both processes, each process owning different devices
    assert summaries[0]["mesh_devices"] == summaries[1]["mesh_devices"]
    assert not set(summaries[0]["local_devices"]) & set(summaries[1]["local_devices"])
    # the averaged metrics are the same number everywhere
    assert summaries[0]["metrics"] == summaries[1]["metrics"]
    # parameters bit-identical on every device of every process
    assert params[0].shape[0] == 2 and params[0].shape == params[1].shape
    for p in params:
        for d in range(p.shape[0]):
            np.testing.assert_array_equal(p[d], params[0][0])


def test_processes_explore_different_environments(worker_results):
    _, summaries = worker_results
    pos = [np.asarray(s["env_pos"]) for s in summaries]  # (local devices, n_envs, A, 3)
    assert not np.array_equal(pos[0], pos[1])
    rows = [tuple(r.ravel()) for p in pos for r in p]  # every device of every process: its own environments
    assert len(set(rows)) == len(rows)


def test_matches_single_process_run_on_four_devices(worker_results):
    """The global device index is what seeds the environments: 2 processes x 2 devices reproduce one
    process x 4 devices (same keys, same data), up to the reduction order of the all-reduce."""
    assert jax.local_device_count() >= 4
    sys.path.insert(0, str(WORKER.parent))
    try:
        import multihost_worker
    finally:
        sys.path.pop(0)
    params, summaries = worker_results
    ref_params, ref_summary = multihost_worker.run(jax.devices()[:4])
    assert ref_summary["updates"] == summaries[0]["updates"] + summaries[1]["updates"]
    np.testing.assert_array_equal(np.asarray(ref_summary["env_pos"]), np.concatenate([summaries[0]["env_pos"], summaries[1]["env_pos"]]))
    np.testing.assert_allclose(ref_params[0], params[0][0], rtol=1e-4, atol=1e-5)
