"""Scaling studies (``jaxmed bench``): a grid over experiment configs, named config variants,
learners, parallel environments, devices, processes, agents, crop size, bank dtype and trunk; per
grid point the environment's agent-steps/s, the training program's env-steps/s and updates/s, its
compile time and the peak memory, into JSON, a Markdown table and throughput curves with
ideal-scaling lines. This package is the one place where jaxmed measures throughput: the
``benchmarks/`` scripts are grid files over it (``benchmarks/grids/*.yaml``) or use its timing
helpers (:func:`timed`, :func:`compile_timed`, :func:`make_random_rollout`) for what a grid cannot
express (the NumPy reference env, the Python-loop DQN, single kernels against NumPy/SciPy).

Every grid point runs in a fresh subprocess (``python -m jaxmed.bench --point JSON``) so that the
device axis can use fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be
set before JAX is imported) and the peak memory is that point's alone. The JSON is rewritten after
every point, so a killed study keeps what it measured.

Grid YAML (every key optional; ``axes`` values are lists; paths relative to the working directory)::

    config: configs/phantom_dqn.yaml    # base experiment (the ``config`` axis replaces it per point)
    overrides: [data.n_train=2]         # section.key=value applied to it first
    variants:                           # named override sets, chosen per point by the ``variant`` axis
      shared: [network.share_trunk=true]
      independent: [network.share_trunk=false]
    measure: [env, train]               # what to time (default both)
    chunks: 3                           # timed training chunks per point (after one warm-up chunk)
    env_steps: 50                       # steps per timed call of the random-action environment rollout
    min_time: 0.0                       # seconds of repeated env rollout calls (median; at least one)
    axes: {config: [...], variant: [shared, independent], learner: [dqn, ppo], n_envs: [16, 64],
           devices: [1, 2, 4], processes: [1, 2], agents: [1, 2], crop_size: [15, 25],
           dtype: [uint8, float16], trunk: [patch, strided]}

Units: ``env_agent_steps_per_s`` = single-agent environment steps per second of the random-action
rollout (``n_envs x devices x processes x agents`` per vector step, reset excluded);
``train_env_steps_per_s`` = environment steps per second of the whole training program (acting,
env, replay, updates) over every device of every process; ``updates_per_s`` = gradient updates per
second (synchronous data-parallel updates count once); ``compile_s`` = first chunk's time minus a
steady chunk's; ``peak_memory_bytes`` = the device's ``peak_bytes_in_use`` where the backend reports
it, else the process's peak RSS (``memory_source`` says which; process 0's under several processes).

**Devices and processes.** ``devices`` is the number of data-parallel devices *per process*
(``n_envs`` environments each). Without a ``processes`` axis a point trains with the learner's own
single-process program (``pmap`` over ``devices``). With a ``processes`` axis every point (also
``processes: 1``) trains DQN with :func:`jaxmed.agents.distributed.make_multihost_train`
(``shard_map`` over the global mesh of ``processes x devices`` devices, gradients averaged over all
of them): ``processes`` local Python processes are launched per point, each with ``devices`` fake
CPU devices, joined by ``jax.distributed`` on ``localhost`` (the ``JAXMED_*`` variables of
:func:`jaxmed.agents.distributed.initialize`; ``processes: 1`` runs the same program without
``jax.distributed``, whose Gloo CPU collectives also carry a process's own all-reduces and cost
tens of milliseconds each on a small CPU). On a real cluster, start one process per host
running the same command with ``--cluster`` (see :func:`run_grid`): each process reads
``JAXMED_COORDINATOR`` / ``JAXMED_NUM_PROCESSES`` / ``JAXMED_PROCESS_ID`` (or SLURM / Open MPI
detection), measures every point in-process over all devices of all hosts, and process 0 writes
the results.

Modules: :mod:`.grid` (grid validation, points, point configs), :mod:`.measure` (one point in this
process), :mod:`.runner` (subprocesses, clusters, the result JSON, ``python -m jaxmed.bench``),
:mod:`.report` (Markdown table, figures) and :mod:`.timing` (machine facts, :func:`timed`,
:func:`compile_timed`, :func:`make_random_rollout`, shared with the ``benchmarks/`` scripts); all
public names are importable from ``jaxmed.bench``."""

from jaxmed.bench.grid import AXES, GRID_KEYS, MEASURES, RESULT_KEYS, grid_from_args, load_grid, point_config, points
from jaxmed.bench.measure import MESH_AXIS, measure_env, measure_point, measure_train, point_devices
from jaxmed.bench.report import markdown, plot
from jaxmed.bench.runner import run_grid, run_point_subprocess
from jaxmed.bench.timing import (
                                 compile_timed,
                                 fmt,
                                 load_avg,
                                 machine_info,
                                 machine_line,
                                 make_random_rollout,
                                 reset_batch,
                                 save_figure,
                                 timed,
)

__all__ = [
    "AXES", "GRID_KEYS", "MEASURES", "MESH_AXIS", "RESULT_KEYS", "compile_timed", "fmt", "grid_from_args", "load_avg",
    "load_grid", "machine_info", "machine_line", "make_random_rollout", "markdown", "measure_env", "measure_point",
    "measure_train", "plot", "point_config", "point_devices", "points", "reset_batch", "run_grid", "run_point_subprocess",
    "save_figure", "timed",
]
