"""The environment protocol (:mod:`jaxmed.envs.base`), checked for EVERY registered env on phantom banks:
reset / step shapes and dtypes, ``observation_space(params, bank).contains(obs)``, auto-reset, the
replay contract ``render(obs_state(s)) == get_obs(s)``, determinism, and jit + vmap agreeing with
the unbatched calls. A new env registered without a phantom setup below fails ``test_every_env_is_covered``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.envs import registered

PHANTOM = {"source": "phantom", "spacing": 2.0, "n_train": 2, "n_test": 1, "dtype": "uint8", "phantom_shape": [32, 32, 32]}
ELLIPSOID = dict(PHANTOM, source="ellipsoid")
PLANE_STEPS = {"angle_steps": [2.0, 6.0], "offset_steps": [1.0, 3.0], "levels": [0, 1]}

#: Per registered env: (data section, env options) of a small phantom set-up.
SETUPS = {
    "landmark-v0": (PHANTOM, {"targets": ["L0"], "crop_size": 9, "frames": 2}),
    "landmark-multiscale-v0": (dict(PHANTOM, factors=[1, 2, 4]), {"targets": ["L0"], "crop_size": 9, "frames": 2}),
    "landmark-multiagent-v0": (PHANTOM, {"targets": ["L0", "L1"], "crop_size": 9, "frames": 1}),
    "box-v0": (ELLIPSOID, {"structure": "organ", "n_points": 26, "grid_size": 9, "frames": 1, "levels": [0], "osc_repeats": 0}),
    "corner-pair-v0": (ELLIPSOID, {"structure": "organ", "n_points": 26, "crop_size": 9, "frames": 1, "levels": [0]}),
    "registration-v0": (dict(PHANTOM, factors=[1, 2]), {"landmarks": ["L0", "L1", "L2", "L3"], "crop_size": 9, "levels": [1],
                                                         "steps": [2.0], "max_translation_mm": 10.0, "max_rotation_deg": 5.0}),
    "plane-v0": (dict(PHANTOM, factors=[1, 2]), {"target": "phantom", "size": 12, "n_slices": 3, "frames": 1, **PLANE_STEPS}),
    "goal-landmark-v0": (PHANTOM, {"goals": ["L0", "L1"], "crop_size": 9, "frames": 1}),
    "goal-plane-v0": (dict(PHANTOM, factors=[1, 2]), {"goals": ["phantom", "phantom_parallel_l3"], "size": 12, "n_slices": 3,
                                                       "frames": 1, **PLANE_STEPS}),
    "threshold-seg-v0": (ELLIPSOID, {"structure": "organ", "crop_size": 16, "max_radius": 2}),
    "voxel-seg-v0": (ELLIPSOID, {"structure": "organ", "crop_size": 8}),
}
N_ENVS, N_STEPS = 3, 4


def test_every_env_is_covered():
    missing = sorted(set(registered()) - set(SETUPS))
    assert not missing, f"add a phantom set-up for {missing} to SETUPS"


@pytest.fixture(scope="module", params=sorted(SETUPS))
def setup(request):
    from jaxmed.experiment import ExperimentConfig, make_bank, make_env

    name = request.param
    if name not in registered():
        pytest.skip(f"{name} is not registered")
    data, options = SETUPS[name]
    cfg = ExperimentConfig.from_dict({"data": data, "env": {"name": name, "max_steps": 5, **options}})
    bank, _, _ = make_bank(cfg, "train", data["n_train"])
    env, params, _ = make_env(cfg, bank.labels)
    return name, env, params, bank


def _assert_obs(env, params, bank, obs):
    space = env.observation_space(params, bank)
    chex.assert_shape(obs, space.shape)
    assert obs.dtype == space.dtype, (obs.dtype, space.dtype)
    assert bool(space.contains(obs))


def _assert_same_obs(a, b):
    """Equal observations: exactly for integer (uint8) images; float images may differ in the last
    bit between two compiled programs (resampling fused differently)."""
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.integer):
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _assert_trees_equal(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_reset_step_shapes_dtypes_and_spaces(setup):
    name, env, params, bank = setup
    assert env.name == name
    obs, state = env.reset(jax.random.key(0), params, bank)
    _assert_obs(env, params, bank, obs)
    action = env.action_space(params).sample(jax.random.key(1))
    assert bool(env.action_space(params).contains(action)) and action.shape == (env.n_agents,)
    obs2, state2, reward, terminated, truncated, info = env.step(jax.random.key(2), state, action, params, bank)
    _assert_obs(env, params, bank, obs2)
    assert reward.dtype == jnp.float32 and reward.shape in ((), (env.n_agents,))
    chex.assert_shape([terminated, truncated], ())
    assert terminated.dtype == jnp.bool_ and truncated.dtype == jnp.bool_
    chex.assert_trees_all_equal_structs(state2, state)
    chex.assert_trees_all_equal_structs(info["final_state"], state)
    for k, v in info.items():
        if k.startswith("final_") and k != "final_state":
            assert jnp.issubdtype(v.dtype, jnp.floating), k  # NaN where the episode did not end
    # state-based replay: the stored obs state renders the observation
    _assert_same_obs(env.render(env.obs_state(state2), bank), obs2)


def test_auto_reset_and_determinism(setup):
    _, env, params, bank = setup
    params = params.replace(max_steps=1)
    _, state = env.reset(jax.random.key(3), params, bank)
    action = env.action_space(params).sample(jax.random.key(4))
    key = jax.random.key(5)
    out = env.step(key, state, action, params, bank)
    obs, new, _, terminated, truncated, info = out
    assert bool(terminated | truncated)  # one step allowed: the episode ended ...
    fresh = jax.jit(env.reset_env)(jax.random.split(key)[1], params, bank)
    _assert_trees_equal(new, fresh)  # ... and the returned state is the reset state of the step key
    _assert_same_obs(obs, env.get_obs(fresh, params, bank))
    again = env.step(key, state, action, params, bank)
    _assert_trees_equal(again, out)  # same key, same everything


def test_jit_vmap_agrees_with_single_calls(setup):
    _, env, params, bank = setup
    keys = jax.random.split(jax.random.key(6), N_ENVS)
    space = env.action_space(params)

    def episode(key):
        k_reset, k_steps = jax.random.split(key)
        obs, state = env.reset(k_reset, params, bank)

        def step(carry, k):
            _, state = carry
            k_act, k_env = jax.random.split(k)
            obs, state, reward, terminated, truncated, _ = env.step(k_env, state, space.sample(k_act), params, bank)
            return (obs, state), (jnp.reshape(reward, (-1,)), terminated | truncated)

        (obs, state), (rewards, ended) = jax.lax.scan(step, (obs, state), jax.random.split(k_steps, N_STEPS))
        return obs, state, rewards, ended

    batched = jax.jit(jax.vmap(episode))(keys)
    obs = batched[0]
    chex.assert_shape(obs, (N_ENVS,) + env.observation_space(params, bank).shape)
    assert np.all(np.isfinite(np.asarray(batched[2])))
    single = jax.jit(episode)(keys[1])
    for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
        np.testing.assert_allclose(np.asarray(b[1], np.float64), np.asarray(s, np.float64), rtol=1e-5, atol=1e-5)
