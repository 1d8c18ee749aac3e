"""Real box targets on the AFIDs template: structure masks, carried surface points, the claim that the
box of the carried points matches the box of the warped mask, caching, and the env reading them."""

import jax
import numpy as np
import pytest

from jaxmed.data import Landmarks, Volume, afids, build_bank
from jaxmed.data.anatomy import STRUCTURES, box_from_points, hull_points, point_labels, structure_landmarks, structure_mask
from jaxmed.data.synth import SynthConfig, make_population, synthesize_subject
from jaxmed.errors import ConfigError, LandmarkError

MASKED = [n for n, s in STRUCTURES.items() if s.mask is not None]


@pytest.fixture(scope="module")
def template():
    return afids.load()


@pytest.fixture(scope="module")
def points(template):
    return structure_landmarks(*template, list(STRUCTURES), cache=False)


def _group(lm: Landmarks, name: str) -> np.ndarray:
    return lm.positions[[i for i, l in enumerate(lm.labels) if l.startswith(name + "#")]]


def test_every_structure_has_its_points_and_plausible_box(template, points):
    volume, lm = template
    assert points.labels == sum((point_labels(n, s.n_points) for n, s in STRUCTURES.items()), ())
    boxes = {n: box_from_points(_group(points, n)) for n in STRUCTURES}
    inside = lambda p, box, tol=0.0: bool(np.all(p >= box[0] - tol) and np.all(p <= box[1] + tol))  # noqa: E731
    brain = boxes["brain"]
    assert all(inside(p, brain) for p in lm.positions)  # every AFIDs landmark is in the brain
    assert 130 < brain[1][0] - brain[0][0] < 160 and 165 < brain[1][1] - brain[0][1] < 195  # adult brain: ~14 x 18 cm
    for label in ("R LV at AC", "L LV at AC", "R LV at PC", "L LV at PC"):  # on the ventricle wall
        assert inside(lm[label], boxes["lateral_ventricles"], tol=2.0), label
    for label in ("genu of CC", "splenium of CC"):
        assert inside(lm[label], boxes["corpus_callosum"], tol=2.0), label
    v4_lo, v4_hi = boxes["fourth_ventricle"]
    ics, pmj, culmen = lm["infracollicular sulcus"], lm["PMJ"], lm["culmen"]
    assert v4_hi[2] < ics[2] and culmen[1] < v4_lo[1] < v4_hi[1] < ics[1] + 1 and 8 < v4_hi[2] - v4_lo[2] < 30
    assert boxes["fourth_ventricle"][1][1] < pmj[1]  # behind the pons
    mid = lm.select(STRUCTURES["midbrain"].landmark_labels).positions
    np.testing.assert_array_equal(np.stack(boxes["midbrain"]), np.stack([mid.min(0), mid.max(0)]))
    for name in MASKED:  # the template box of the points is exactly the mask's box
        world = volume.voxel_to_world(np.argwhere(structure_mask(volume, lm, name)))
        np.testing.assert_allclose(np.stack(boxes[name]), np.stack([world.min(0), world.max(0)]), atol=1e-9, err_msg=name)


@pytest.mark.parametrize("seed", [3])
def test_box_of_carried_points_matches_the_warped_mask(template, points, seed):
    """The claim behind the design: after a random affine + elastic warp, the box of the carried points
    equals the box of the warped mask to within one subject voxel."""
    volume, lm = template
    quiet = SynthConfig(bias_max=0.0, gamma_range=(1.0, 1.0), noise_std_range=(0.0, 0.0))
    for name in MASKED:
        mask = structure_mask(volume, lm, name).astype(np.float32)
        carried = Landmarks(point_labels(name, STRUCTURES[name].n_points), _group(points, name))
        sub = synthesize_subject(Volume(mask, volume.affine), carried, seed, quiet)
        world = sub.volume.voxel_to_world(np.argwhere(sub.volume.data > 0.5))
        lo, hi = box_from_points(sub.landmarks.positions)
        voxel = float(sub.volume.spacing.max())
        err = np.abs(np.concatenate([lo - world.min(0), hi - world.max(0)]))
        assert err.max() <= voxel, (name, err.round(2), voxel)
        # the box moved with the subject (the transform is not the identity)
        assert np.abs(lo - box_from_points(carried.positions)[0]).max() > 2.0


def test_points_are_cached_and_deterministic(template, points, tmp_path, monkeypatch):
    volume, lm = template
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))
    first = structure_landmarks(volume, lm, ["fourth_ventricle", "midbrain"])
    files = list((tmp_path / "anatomy").glob("structures-*.json"))
    assert len(files) == 1
    again = structure_landmarks(volume, lm, ["fourth_ventricle", "midbrain"])
    assert again.source == str(files[0]) and again.labels == first.labels
    np.testing.assert_array_equal(again.positions, first.positions)
    np.testing.assert_array_equal(first.positions, points.select(first.labels).positions)
    files[0].write_text("{not json")  # a corrupt entry is recomputed
    np.testing.assert_array_equal(structure_landmarks(volume, lm, ["fourth_ventricle", "midbrain"]).positions, first.positions)


def test_hull_points_extremes_first_and_fixed_count():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(400, 3))
    out = hull_points(pts, 20)
    assert out.shape == (20, 3)
    np.testing.assert_array_equal(np.stack([out.min(0), out.max(0)]), np.stack([pts.min(0), pts.max(0)]))
    np.testing.assert_array_equal(hull_points(pts[::-1], 20), out)  # independent of the input order
    from scipy.spatial import ConvexHull

    n_hull = len(ConvexHull(pts).vertices)
    more = hull_points(pts, n_hull + 10)  # all hull vertices, then interior points
    assert len(np.unique(more, axis=0)) == n_hull + 10
    with pytest.raises(LandmarkError, match="cannot give"):
        hull_points(pts[:5], 6)


def test_unknown_structure_raises(template):
    with pytest.raises(ConfigError, match="unknown structure 'liver'.*brain"):
        structure_landmarks(*template, ["liver"], cache=False)
    with pytest.raises(ConfigError, match="defined by landmarks"):
        structure_mask(*template, "midbrain")


def test_box_env_reads_the_carried_structure_box(template, points):
    """Template + structure points -> synthetic subjects -> bank -> the env's target box is the box of
    each subject's carried points; the env knows its labels from the anatomy definitions alone."""
    from jaxmed.envs.box import BoxConfig, BoxEnv

    volume, lm = template
    env = BoxEnv(BoxConfig(structure="fourth_ventricle", grid_size=8))
    labels = env.required_labels
    assert labels == point_labels("fourth_ventricle", 64)
    both = Landmarks(lm.labels + points.labels, np.concatenate([lm.positions, points.positions]))
    subjects = make_population(volume, both.select(labels), 2, split="test")
    bank = build_bank(subjects, labels, max_crop=8)
    for v, s in enumerate(subjects):
        lo, hi = env.target_box(bank, v)
        want = box_from_points(s.landmarks.positions)
        np.testing.assert_allclose(np.stack([np.asarray(lo), np.asarray(hi)]), np.stack(want), atol=1e-3)
    state = jax.tree.map(lambda x: x[0], env.eval_states(None, bank, 1))
    assert 0.0 <= float(env.eval_metrics(state, None, bank)["iou"][0]) < 0.2  # a large centred start box
