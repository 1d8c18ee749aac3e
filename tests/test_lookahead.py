"""Look-ahead search: equals greedy at top_k=1 / depth=0, matches a plain Python reference, and
actually searches (with an oracle 'network' it hill-climbs where greedy cannot), on the landmark
env (multi-agent) and the registration env."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.agents.dqn import greedy_action
from jaxmed.agents.lookahead import lookahead_action, lookahead_rollout
from jaxmed.agents.rollout import greedy_rollout
from jaxmed.data import blob_phantom, build_bank
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams
from jaxmed.envs.registration import RegistrationConfig, RegistrationEnv
from jaxmed.envs.registration import RegistrationParams as RegParams
from jaxmed.errors import ConfigError
from jaxmed.networks import QNetwork

D = 15
LABELS = ("L0", "L1")


@pytest.fixture(scope="module")
def bank():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=s) for s in range(2)]
    return build_bank(subjects, labels=LABELS, factors=(1, 2), max_crop=D, dtype="uint8")


def _landmark(bank):
    env = LandmarkEnv(LandmarkConfig(targets=LABELS, crop_size=D, frames=1), labels=bank.labels)
    return env, env.eval_params(LandmarkParams(max_steps=20))


def _registration(bank):
    env = RegistrationEnv(RegistrationConfig(landmarks=LABELS, crop_size=D, levels=(1,), steps=(2.0,)), labels=bank.labels)
    return env, RegParams(max_steps=20, max_translation_mm=8.0, max_rotation_deg=8.0)


def _net(env):
    net = QNetwork(trunk="patch", n_actions=env.num_actions, trunk_kwargs={"patch_size": 5, "width": 0.25}, head_kwargs={"hidden": (16,)})
    return net


@pytest.fixture(scope="module", params=["landmark", "registration"])
def setup(request, bank):
    env, params = (_landmark if request.param == "landmark" else _registration)(bank)
    net = _net(env)  # shared over the agent axis
    states = env.eval_states(params, bank, 4, seed=3)
    obs = jax.jit(jax.vmap(env.get_obs, in_axes=(0, None, None)))(states, params, bank)
    net_params = net.init(jax.random.key(1), obs[:1])
    return env, params, net, net_params, states, obs


def test_top1_and_depth0_equal_greedy(setup, bank):
    env, params, net, net_params, states, obs = setup
    greedy = np.asarray(greedy_action(net, net_params, obs))
    for k, d in ((1, 3), (4, 0)):
        act = jax.jit(jax.vmap(lambda s: lookahead_action(net, net_params, env, params, bank, s, k, d)))(states)
        np.testing.assert_array_equal(np.asarray(act), greedy)
    ref = jax.jit(lambda p: greedy_rollout(lambda o: greedy_action(net, p, o), env, params, bank, states))(net_params)
    la = jax.jit(lambda p: lookahead_rollout(net, p, env, params, bank, states, top_k=1, depth=2))(net_params)
    for name in ref["metrics"]:
        np.testing.assert_allclose(np.asarray(la["metrics"][name]), np.asarray(ref["metrics"][name]), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(la["steps"]), np.asarray(ref["steps"]))


def _reference_action(net, net_params, env, params, bank, state, top_k, depth):
    """Plain Python: one candidate at a time, one step at a time (env functions jitted for speed)."""
    q_of = jax.jit(lambda s: net.apply(net_params, env.get_obs(s, params, bank)[None])[0])
    step = jax.jit(lambda s, a: env.step_env(jax.random.key(0), s, a, params, bank)[0])
    q = np.asarray(q_of(state))  # (A, n)
    order = np.argsort(-q, axis=-1, kind="stable")[:, :top_k]
    scores = []
    for j in range(top_k):
        s = step(state, jnp.asarray(order[:, j], jnp.int32))
        for _ in range(depth - 1):
            s = step(s, jnp.asarray(np.argmax(np.asarray(q_of(s)), axis=-1), jnp.int32))
        v = np.asarray(q_of(s)).max(-1)
        scores.append(-v)
    best = np.argmax(np.stack(scores), axis=0)
    return order[np.arange(order.shape[0]), best]


def test_matches_python_reference(setup, bank):
    env, params, net, net_params, states, _ = setup
    fn = jax.jit(lambda s: lookahead_action(net, net_params, env, params, bank, s, 3, 2))
    for i in (0, 3, 5):
        s = jax.tree.map(lambda x: x[i], states)
        np.testing.assert_array_equal(np.asarray(fn(s)), _reference_action(net, net_params, env, params, bank, s, 3, 2))


class _Oracle:
    """A 'network' of hand-written Q-values: every action gets the same value, an image-based estimate
    of the error still left. Greedy therefore always takes action 0; only the search can do better."""

    def __init__(self, kind: str):
        self.kind = kind

    def apply(self, params, obs):
        obs = obs.astype(jnp.float32)
        if self.kind == "landmark":  # error left ~ 1 - (normalised) intensity at the crop centre
            c = obs.shape[-1] // 2
            left = 1.0 - obs[..., 0, c, c, c] / 255.0  # (B, A)
            return jnp.broadcast_to(left[..., None], left.shape + (6,))
        left = jnp.mean((obs[..., 0, :, :, :] - obs[..., 1, :, :, :]) ** 2, axis=(-3, -2, -1))  # (B, 1)
        return jnp.broadcast_to(left[..., None], left.shape + (12,))


def test_search_hill_climbs_with_an_oracle_where_greedy_cannot(bank):
    """Landmark: maximising the simulated centre intensity walks agents onto their blobs. Registration:
    minimising the simulated intensity mismatch registers mono-modal pairs (TRE drops)."""
    env, params = _landmark(bank)
    rng = np.random.default_rng(0)
    vols = np.repeat(np.arange(2), 4)
    lm = np.asarray(bank.landmarks_vox[0])[vols]  # (E, A, 3)
    starts = np.clip(np.rint(lm + rng.uniform(-3, 3, lm.shape)), 0, 31).astype(np.int32)
    _, states = jax.vmap(env.reset_at, in_axes=(None, None, 0, 0))(params, bank, jnp.asarray(vols), jnp.asarray(starts))
    oracle = _Oracle("landmark")
    start_err = np.asarray(jax.vmap(env.distance_mm, in_axes=(0, None))(states, bank))
    la = lookahead_rollout(oracle, None, env, params, bank, states, top_k=6, depth=1)
    gr = lookahead_rollout(oracle, None, env, params, bank, states, top_k=1, depth=1)
    la_err, gr_err = np.asarray(la["metrics"]["distance_mm"]), np.asarray(gr["metrics"]["distance_mm"])
    assert np.median(la_err) <= 2.0 + 1e-6 and la_err.mean() < 0.5 * start_err.mean() < gr_err.mean(), (la_err, start_err, gr_err)

    env, params = _registration(bank)
    states = env.eval_states(params, bank, 4, seed=0)
    start = np.asarray(jax.vmap(env.tre_mm, in_axes=(0, None))(states, bank))
    la = lookahead_rollout(_Oracle("registration"), None, env, params, bank, states, top_k=12, depth=1)
    assert np.asarray(la["metrics"]["tre_mm"]).mean() < 0.5 * start.mean(), (la["metrics"]["tre_mm"], start)


def test_bad_search_parameters(bank):
    env, params = _registration(bank)
    state = jax.tree.map(lambda x: x[0], env.eval_states(params, bank, 1))
    for k, d in ((0, 1), (2, -1), (13, 1)):
        with pytest.raises(ConfigError, match="top_k"):
            lookahead_action(_Oracle("registration"), None, env, params, bank, state, k, d)
