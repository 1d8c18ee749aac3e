"""Goal-conditioned view planes (goal-plane-v0): the goal frame reproduces the plane env exactly, the
goal slab is the reference volume's view, observation and reward depend on the goal, one trained agent
reaches either of two parallel planes from the same start depending on the goal slab, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data import Volume, build_bank
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.planes import _MSP_LABELS
from jaxmed.envs import make
from jaxmed.envs.goal_plane import GoalPlaneConfig, GoalPlaneEnv, frame_rotation, goal_definition
from jaxmed.envs.plane import N_ACTIONS, PlaneConfig, PlaneEnv, PlaneParams
from jaxmed.errors import ConfigError, LandmarkError

GOALS = ("phantom", "phantom_parallel_l3")
LABELS = ("L0", "L1", "L2", "L3")
GAP_MM = 10.0


def two_sheet_phantom(seed: int, shape=(32, 32, 32), spacing=2.0, gap=GAP_MM, noise=0.02):
    """Head-like ellipsoid with two parallel sheets ``gap`` mm apart (normal tilted up to 12 degrees
    from +S): sheet A (landmarks L0, L1, L2) uniformly bright, sheet B (landmark L3, the point of B
    nearest the centre) striped, over a ramp along the normal (which side of a sheet a slab is on)."""
    rng = np.random.default_rng(seed)
    origin = -(np.asarray(shape) - 1) / 2 * spacing
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = idx * spacing + origin
    half = (np.asarray(shape) - 1) / 2 * spacing
    tilt, phi = np.radians(rng.uniform(0, 12)), rng.uniform(0, 2 * np.pi)
    n = np.array([np.sin(tilt) * np.cos(phi), np.sin(tilt) * np.sin(phi), np.cos(tilt)])
    a = n * (rng.uniform(-2, 2) - gap / 2)  # sheet A's point nearest the centre; B is gap above
    s = (world - a) @ n
    u = np.cross(n, [1.0, 0, 0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * ((world - a) @ u) / 8.0)
    head = np.sum((world / (np.array([0.85, 0.75, 0.75]) * half)) ** 2, axis=-1) <= 1.0
    data = head * (0.25 + 0.02 * s + 0.4 * np.exp(-0.5 * (s / 1.5) ** 2) + 0.5 * stripes * np.exp(-0.5 * ((s - gap) / 1.5) ** 2))
    data = np.clip(data + noise * rng.standard_normal(shape), 0, None).astype(np.float32)
    r = 0.4 * half.min()
    points = [a + r * (np.cos(t) * u + np.sin(t) * v) for t in np.radians([0, 120, 240])] + [a + gap * n]
    vol = Volume(data / data.max(), affine, source=f"two_sheet_phantom({seed})")
    return vol, Landmarks(LABELS, np.array(points), source=vol.source)


ENV = dict(goals=GOALS, size=16, n_slices=3, frames=1, levels=(0, 1), angle_steps=(2.0, 6.0), offset_steps=(1.0, 3.0), slice_gap=1.0)
PARAMS = dict(max_steps=30, max_start_angle_deg=10.0, max_start_offset_mm=10.0)


@pytest.fixture(scope="module")
def bank():
    # volume 0 is the reference (the goal slabs are cut from it); the others are navigated
    return build_bank([two_sheet_phantom(s) for s in range(6)], LABELS, factors=(1, 2), max_crop=3, dtype="uint8", packed=True)


@pytest.fixture(scope="module")
def env(bank):
    return GoalPlaneEnv(GoalPlaneConfig(**ENV), labels=bank.labels)


def midway_starts(env, bank, volumes):
    """Start planes halfway between the two goal planes of each volume, both goals from each: ``(states, E)``."""
    vols, goals, normals, offsets = [], [], [], []
    for v in volumes:
        lm = np.asarray(bank.landmarks_world[v], np.float64)
        n = np.cross(lm[1] - lm[0], lm[2] - lm[0])
        n /= np.linalg.norm(n) * np.sign(n[2])
        d = 0.5 * (n @ lm[0] + n @ lm[3])
        for g in range(2):
            vols.append(v), goals.append(g), normals.append(n), offsets.append(d)
    return env.states_at(bank, vols, goals, np.array(normals), np.array(offsets))


# ---------------------------------------------------------------- the goal frame is exact


@pytest.fixture(scope="module")
def afids_bank():
    from jaxmed.data import afids

    vol, lm = afids.load(spacing=4.0)
    lm = lm.select(_MSP_LABELS)
    axis, deg = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5]), np.radians(9.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(deg) * k + (1 - np.cos(deg)) * k @ k
    r4 = np.eye(4)
    r4[:3, :3] = rot
    oblique = (Volume(vol.data, r4 @ vol.affine, source="oblique template"), lm.with_positions(lm.positions @ rot.T))
    return build_bank([(vol, lm), oblique], _MSP_LABELS, factors=(1,), max_crop=3, dtype="float32")


@pytest.mark.parametrize("plane", ["midsagittal", "coronal_ac"])  # normals ~R and ~A: rotated frames
def test_goal_frame_reproduces_the_plane_env(afids_bank, plane):
    """In the goal frame (a rotated view of the bank) the slabs, offset moves, rewards and metrics are
    those of the plane env with that target; the goal slab is the plane env's view of the reference."""
    bank = afids_bank
    cfg = dict(size=12, n_slices=3, frames=1, levels=(0,), angle_steps=(2.0,), offset_steps=(2.0,), slice_gap=1.5)
    genv = GoalPlaneEnv(GoalPlaneConfig(goals=(plane,), **cfg), labels=bank.labels)
    penv = PlaneEnv(PlaneConfig(target=plane, **cfg), labels=bank.labels)
    rot = frame_rotation(goal_definition(plane))
    assert np.allclose(rot @ rot.T, np.eye(3)) and np.isclose(np.linalg.det(rot), 1.0)
    params = PlaneParams(max_steps=50)
    n_t, d_t, _ = (np.asarray(x) for x in penv.target_plane(bank, 1))
    tilt = np.cross(n_t, [0.3, -0.2, 0.4])
    normal = n_t + 0.15 * tilt / np.linalg.norm(tilt)
    normal /= np.linalg.norm(normal)
    gs = jax.tree.map(lambda x: x[0], genv.states_at(bank, [1], [0], normal[None], [d_t + 5.0]))
    ps = jax.tree.map(lambda x: x[0], penv.states_at(bank, [1], normal[None], [d_t + 5.0]))
    ref = jax.tree.map(lambda x: x[0], penv.states_at(bank, [0], np.asarray(penv.target_plane(bank, 0)[0])[None],
                                                       [float(penv.target_plane(bank, 0)[1])]))
    gstep, pstep = jax.jit(genv.step_env), jax.jit(penv.step_env)
    gget, pget = jax.jit(genv.get_obs), jax.jit(penv.get_obs)
    gobs, pobs = np.asarray(gget(gs, params, bank)), np.asarray(pget(ps, params, bank))
    assert gobs.shape == (1, 2, 3, 12, 12)
    np.testing.assert_allclose(gobs[:, :1], pobs, atol=1e-4)
    np.testing.assert_allclose(gobs[:, 1:], np.asarray(pget(ref, params, bank)), atol=1e-4)
    for a in (6, 6, 7, 7, 7, 6):  # offset moves act along the normal in both frames
        gs, gr, *_ = gstep(jax.random.key(0), gs, jnp.array([a]), params, bank)
        ps, pr, *_ = pstep(jax.random.key(0), ps, jnp.array([a]), params, bank)
        np.testing.assert_allclose(np.asarray(gr), np.asarray(pr), atol=1e-4)
    gm, pm = genv.eval_metrics(gs, params, bank), penv.eval_metrics(ps, params, bank)
    for k in ("angle_deg", "distance_mm", "landmark_distance_mm"):
        np.testing.assert_allclose(np.asarray(gm[k]), np.asarray(pm[k]), atol=2e-3)
    gn, gd = genv.plane_world(gs, bank)
    pn, pd = penv.plane_world(ps, bank)
    np.testing.assert_allclose(np.asarray(gn), np.asarray(pn), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gd), np.asarray(pd), atol=1e-3)
    np.testing.assert_allclose(np.asarray(gget(gs, params, bank))[:, :1], np.asarray(pget(ps, params, bank)), atol=1e-4)


# ---------------------------------------------------------------- goal dependence, replay, protocol


def test_observation_and_reward_depend_on_the_goal(env, bank):
    params = PlaneParams(**PARAMS)
    states = midway_starts(env, bank, [1])
    obs = np.asarray(jax.jit(jax.vmap(env.get_obs, in_axes=(0, None, None)))(states, params, bank)).astype(int)
    assert obs.shape == (2, 1, 2, 3, 16, 16)
    assert np.array_equal(obs[0, :, 0], obs[1, :, 0])  # the same view ...
    assert np.abs(obs[0, :, 1] - obs[1, :, 1]).mean() > 5  # ... asked for two different goal slabs
    # the same move is rewarded for one goal and punished for the other (sheet B lies along +n)
    step = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, None, None)))
    _, up, *_ = step(jax.random.key(0), states, jnp.full((2, 1), 6), params, bank)
    _, down, *_ = step(jax.random.key(0), states, jnp.full((2, 1), 7), params, bank)
    np.testing.assert_allclose(np.asarray(up)[:, 0], [-1.0, 1.0])
    np.testing.assert_allclose(np.asarray(down)[:, 0], [1.0, -1.0])
    m = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, params, bank)
    np.testing.assert_allclose(np.asarray(m["distance_mm"])[:, 0], GAP_MM / 2, atol=0.05)


def test_reset_render_roundtrip_and_eval_states(env, bank):
    params = PlaneParams(**PARAMS)
    reset = jax.jit(jax.vmap(env.reset_env, in_axes=(0, None, None)))
    states = reset(jax.random.split(jax.random.key(3), 64), params, bank)
    vols, goals = np.asarray(states.volume), np.asarray(states.goal)[:, 0]
    assert vols.min() >= 1 and set(vols.tolist()) == {1, 2, 3, 4, 5}  # never the reference volume
    assert set(goals.tolist()) == {0, 1}
    start = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, params, bank)
    assert np.all(np.asarray(start["angle_deg"]) <= PARAMS["max_start_angle_deg"] + 1e-3)
    obs = jax.jit(jax.vmap(env.get_obs, in_axes=(0, None, None)))(states, params, bank)
    again = jax.jit(jax.vmap(lambda s, b: env.render(env.obs_state(s), b), in_axes=(0, None)))(states, bank)
    assert np.array_equal(np.asarray(obs), np.asarray(again))
    ev = env.eval_states(env.eval_params(params), bank, 3, seed=1)
    assert np.asarray(ev.volume).tolist() == [v for v in range(1, 6) for _ in range(6)]
    assert np.asarray(ev.goal)[:, 0].tolist() == [0, 0, 0, 1, 1, 1] * 5
    assert env.eval_params(PlaneParams(terminate_at_target=2.0)).terminate_at_target == 0.0
    assert env.wants_reference and not GoalPlaneEnv(GoalPlaneConfig(goals=GOALS, reference_volume=2)).wants_reference
    assert env.required_labels == LABELS and env.metric_labels == ("goal",) and env.wants_packed_bank
    e2, _ = make("goal-plane-v0", LABELS, **ENV)
    assert isinstance(e2, GoalPlaneEnv) and e2 == env.__class__(e2.config, labels=LABELS, name="goal-plane-v0")


def test_bad_input_raises_clear_errors(env, bank):
    with pytest.raises(ConfigError, match="unknown goal plane"):
        GoalPlaneConfig(goals=("phantom", "axial"))
    with pytest.raises(ConfigError, match="repeat"):
        GoalPlaneConfig(goals=("phantom", "phantom"))
    with pytest.raises(ConfigError, match="empty"):
        GoalPlaneConfig(goals=())
    with pytest.raises(ConfigError, match="reference_volume"):
        GoalPlaneConfig(goals=GOALS, reference_volume=-1)
    with pytest.raises(ConfigError, match="levels"):
        GoalPlaneConfig(goals=GOALS, levels=(1, 0), angle_steps=(1.0, 2.0), offset_steps=(1.0, 2.0))
    with pytest.raises(LandmarkError, match="L3"):
        GoalPlaneEnv(GoalPlaneConfig(goals=GOALS), labels=("L0", "L1", "L2"))
    with pytest.raises(ConfigError, match="unknown option"):
        make("goal-plane-v0", LABELS, goals=GOALS, target="phantom")
    single = build_bank([two_sheet_phantom(0)], LABELS, factors=(1, 2), max_crop=3, dtype="uint8")
    with pytest.raises(ConfigError, match="reference volume"):
        env.reset(jax.random.key(0), PlaneParams(), single)
    with pytest.raises(ConfigError, match="pyramid levels"):
        env.reset(jax.random.key(0), PlaneParams(), build_bank([two_sheet_phantom(0), two_sheet_phantom(1)], LABELS, max_crop=3))
    _, state = env.reset(jax.random.key(0), PlaneParams(), bank)
    with pytest.raises(ConfigError, match="0..7"):
        env.step(jax.random.key(0), state, jnp.array([8]), PlaneParams(), bank)
    with pytest.raises(ConfigError, match="goal indices"):
        env.states_at(bank, [1], [2], np.array([[0.0, 0.0, 1.0]]), [0.0])
    with pytest.raises(ConfigError, match="normals"):
        env.states_at(bank, [1], [0], np.array([[0.0, 0.0, 0.0]]), [0.0])
    with pytest.raises(ConfigError, match="n_starts"):
        env.eval_states(PlaneParams(), bank, 0)


# ---------------------------------------------------------------- learning: the goal slab steers the policy


def test_one_agent_reaches_either_plane_from_the_same_start(env, bank):
    """A tiny DQN trained on both goals, started halfway between the two planes (where only the goal
    slab says which way to go), ends near the plane it was shown and far from the other one, for both
    goals, and beats a uniformly random policy on each."""
    from jaxmed.agents.dqn import DQNConfig, greedy_action, make_train
    from jaxmed.agents.rollout import greedy_rollout
    from jaxmed.networks import network_from_config

    params = PlaneParams(**PARAMS)
    net = network_from_config(dict(trunk={"name": "patch", "patch_size": [3, 4, 4], "group": [1, 2, 2], "width": 0.5},
                                   head={"name": "q", "hidden": [64, 32]}, n_actions=N_ACTIONS, crop_size=[3, 16, 16]))
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=600, target_update_period=100, double=True)
    fns = make_train(cfg, env, params, net)
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    chunk = jax.jit(fns.run_chunk)
    for _ in range(12):
        rs, metrics = chunk(rs, bank)
    assert np.isfinite(float(metrics["loss"]))

    ev = env.eval_params(params)
    states = midway_starts(env, bank, range(1, 6))  # 5 volumes x 2 goals, the same start per volume
    goal = np.asarray(states.goal)[:, 0]

    @jax.jit
    def run(use_random):
        def policy(o):
            key = jax.random.fold_in(jax.random.key(7), jnp.sum(o, dtype=jnp.uint32))
            return jnp.where(use_random, jax.random.randint(key, o.shape[:2], 0, N_ACTIONS), greedy_action(net, rs.params, o))

        out = greedy_rollout(policy, env, ev, bank, states)
        return out["metrics"], out["final_state"]

    (trained, final), (random, _) = run(False), run(True)
    dist = np.asarray(trained["distance_mm"])[:, 0]
    angle = np.asarray(trained["angle_deg"])[:, 0]
    # distance of the reached plane to the *other* goal's plane: the goal-0 plane's point is the
    # centroid of L0..L2, the goal-1 plane's L3
    normal, dw = jax.jit(jax.vmap(env.plane_world, in_axes=(0, None)))(final, bank)
    normal, dw = np.asarray(normal)[:, 0], np.asarray(dw)[:, 0]
    lm = np.asarray(bank.landmarks_world)[np.asarray(final.volume)]
    goal_points = np.stack([lm[:, :3].mean(axis=1), lm[:, 3]], axis=1)  # (E, 2, 3)
    to_other = np.abs(np.einsum("ej,ej->e", normal, goal_points[np.arange(len(goal)), 1 - goal]) - dw)
    for g in (0, 1):
        sel = goal == g
        assert np.median(dist[sel]) < 2.0 and np.median(angle[sel]) < 5.0, (g, dist, angle)
        assert np.median(to_other[sel]) > GAP_MM - 3.0, (g, to_other)
        rand = np.asarray(random["distance_mm"])[sel, 0] + np.asarray(random["angle_deg"])[sel, 0]
        assert (dist[sel] + angle[sel]).mean() < 0.5 * rand.mean(), (g, dist, angle, rand)
    stats = env.metric_stats(states, dist[:, None], "distance_mm")
    assert set(stats) == set(GOALS) and all(s["n"] == 5 for s in stats.values())
