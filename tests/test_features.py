"""jaxmed.ops.features against a NumPy reference, its invariances, and the registration env's
``features`` observations and a four-channel checkpoint through the registration agent (the learning
test from edge maps is in test_registration.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data import blob_phantom, build_bank
from jaxmed.envs.registration import RegistrationConfig, RegistrationEnv, remap_intensity
from jaxmed.errors import ConfigError
from jaxmed.ops.features import edge_map, gradient_magnitude

LABELS = ("L0", "L1", "L2", "L3")
D = 11


def _np_gradient_magnitude(crop):
    return np.sqrt(sum(d ** 2 for d in np.gradient(crop.astype(np.float64))))


def _np_edge_map(crop, rel_eps):
    g = _np_gradient_magnitude(crop)
    eps = rel_eps * g.mean() + 1e-6
    return g / np.sqrt(g * g + eps * eps)


def _tissue_crop(values, shape=(13, 12, 11), seed=0):
    """A piecewise-constant crop of three nested tissue classes with intensities ``values``."""
    z, y, x = np.meshgrid(*[np.arange(n) - n / 2 + 0.5 for n in shape], indexing="ij")
    r = np.sqrt((z / 1.1) ** 2 + y ** 2 + (x / 0.9) ** 2)
    labels = (r < 5.5).astype(int) + (r < 3.0) + (r < 1.5)
    noise = np.random.default_rng(seed).normal(0.0, 0.002, shape)
    return (np.asarray(values, np.float32)[labels] + noise).astype(np.float32), labels > 0


def test_edge_map_matches_numpy_reference_under_jit_and_batch():
    rng = np.random.default_rng(0)
    crops = rng.uniform(0, 1, (2, 3, 9, 8, 7)).astype(np.float32)
    crops[1, 2] = 0.25  # a flat crop: no gradient, no edge
    got_g = np.asarray(jax.jit(gradient_magnitude)(crops))
    got = np.asarray(jax.jit(edge_map, static_argnums=1)(crops, 0.5))
    assert got.shape == crops.shape and got.dtype == np.float32
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(got_g[i, j], _np_gradient_magnitude(crops[i, j]), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[i, j], _np_edge_map(crops[i, j], 0.5), rtol=1e-5, atol=1e-6)
    assert np.all(got[1, 2] == 0.0)
    assert got.min() >= 0.0 and got.max() < 1.0


def test_edge_map_ignores_gain_and_tissue_contrast():
    """The same anatomy under a gain, an inverted contrast and shuffled tissue intensities gives nearly
    the same edges, where the intensities themselves are uncorrelated or anti-correlated."""
    base, head = _tissue_crop([0.0, 0.3, 0.6, 0.9])
    e = np.asarray(edge_map(base))
    np.testing.assert_allclose(np.asarray(edge_map(0.4 * base)), e, atol=1e-5)  # any positive gain
    for values in ([0.0, 0.9, 0.6, 0.3], [0.0, 0.6, 0.2, 0.95]):  # inverted, non-monotone
        other, _ = _tissue_crop(values, seed=1)
        assert np.corrcoef(base[head], other[head])[0, 1] < 0.7  # inside the head
        e2 = np.asarray(edge_map(other))
        assert np.corrcoef(e.ravel(), e2.ravel())[0, 1] > 0.9
        boundary = e > 0.5
        assert boundary.mean() > 0.05 and np.mean(e2[boundary] > 0.5) > 0.9  # the boundaries stay edges


@pytest.fixture(scope="module")
def bank():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=s) for s in range(2)]
    return build_bank(subjects, labels=LABELS, factors=(1, 2), max_crop=D, dtype="uint8")


def _env(**kw):
    return RegistrationEnv(RegistrationConfig(landmarks=LABELS, crop_size=D, levels=(0, 1), steps=(1.0, 2.0), **kw),
                           labels=LABELS)


def test_registration_edges_observation_is_the_edge_map_of_the_intensity_observation(bank):
    plain, edges = _env(), _env(features="edges", edge_rel_eps=0.3)
    state = plain.initial_state(bank, 1, jnp.asarray([5.0, -3.0, 2.0, 6.0, -4.0, 2.0]))
    for level in (0, 1):
        s = state.replace(level=jnp.int32(level))
        obs = np.asarray(jax.jit(plain.get_obs)(s, None, bank))
        got = np.asarray(jax.jit(edges.get_obs)(s, None, bank))
        assert got.shape == obs.shape == (1, 2, D, D, D) and got.dtype == np.float32
        assert edges.observation_space().contains(got)
        for ch in range(2):
            np.testing.assert_allclose(got[0, ch], _np_edge_map(obs[0, ch], 0.3), rtol=1e-4, atol=1e-5)
        # state-based replay renders the same observation
        np.testing.assert_allclose(np.asarray(jax.jit(edges.render)(edges.obs_state(s), bank)), got, atol=1e-6)


def test_registration_intensity_and_edges_observation_has_both(bank):
    plain, both = _env(), _env(features="intensity+edges")
    assert both.observation_space().shape == (1, 4, D, D, D) and plain.observation_space().shape == (1, 2, D, D, D)
    state = plain.initial_state(bank, 0, jnp.asarray([-4.0, 2.0, 3.0, -5.0, 3.0, 1.0]))
    obs = np.asarray(plain.get_obs(state, None, bank))
    got = np.asarray(jax.jit(both.get_obs)(state, None, bank))
    assert got.shape == (1, 4, D, D, D) and both.observation_space().contains(got)
    np.testing.assert_allclose(got[0, :2], obs[0], atol=1e-6)
    for ch in range(2):
        np.testing.assert_allclose(got[0, 2 + ch], _np_edge_map(obs[0, ch], 0.5), rtol=1e-4, atol=1e-5)


def test_registration_edges_observation_is_unchanged_by_gain_and_remap(bank):
    """At the ground truth the edge channels of the fixed and the (gained, remapped) moving image agree."""
    gt = jnp.asarray([4.0, 1.0, -2.0, 5.0, 0.0, -3.0])
    for kw in ({}, {"remap": "monotone"}, {"remap": "nonmonotone"}):
        env = _env(features="edges", **kw)
        s = env.initial_state(bank, 0, gt)
        s = s.replace(estimate=s.gt, gain=jnp.float32(0.6))
        obs = np.asarray(env.get_obs(s, None, bank))[0]
        assert np.corrcoef(obs[0].ravel(), obs[1].ravel())[0, 1] > 0.8, kw
    x = np.linspace(0, 1, 5, dtype=np.float32)
    assert not np.allclose(remap_intensity(x, "nonmonotone"), x)  # the remap does change intensities


def test_registration_features_option_is_checked():
    with pytest.raises(ConfigError, match="features"):
        RegistrationConfig(features="gradients")
    with pytest.raises(ConfigError, match="edge_rel_eps"):
        RegistrationConfig(features="edges", edge_rel_eps=0.0)


def test_register_reads_a_four_channel_checkpoint(tmp_path):
    """A run trained with ``env.features: intensity+edges`` registers through
    :class:`~jaxmed.registration_agent.RegistrationAgent` (as ``jaxmed register --checkpoint`` does):
    its env renders four channels and the answer is rigid."""
    from untrained_runs import untrained_run

    from jaxmed.commands.register import resample_moving
    from jaxmed.data import Volume
    from jaxmed.ops.rigid import rigid_matrix
    from jaxmed.registration_agent import RegistrationAgent
    from jaxmed.runs import load_params, load_run

    run = tmp_path / "run"
    untrained_run(run, "configs/phantom_registration_dqn.yaml", features="intensity+edges")
    assert load_run(run)[0].env.observation_space().shape[1] == 4
    loaded = load_params(run)
    fixed, _ = blob_phantom(shape=(30, 28, 26), spacing=2.0, n_landmarks=4, seed=7)
    c = fixed.voxel_to_world((np.asarray(fixed.shape) - 1) / 2)
    gt = np.asarray(rigid_matrix(np.array([5.0, -3.0, 4.0, 0.0, 6.0, -4.0]), c), np.float64)
    moving = Volume(resample_moving(fixed, fixed, np.linalg.inv(gt)), fixed.affine)
    answer = RegistrationAgent(loaded, intensity_scales=(0.8, 1.0), starts=2).register(fixed, moving)
    assert answer.episodes == 4 and answer.steps >= 1
    np.testing.assert_allclose(answer.matrix[:3, :3] @ answer.matrix[:3, :3].T, np.eye(3), atol=1e-5)
