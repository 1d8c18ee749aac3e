"""benchmarks/commissure_offsets.py: the bundle centre of an intensity line and the line sampler."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from jaxmed.data import Volume

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "commissure_offsets.py"
_spec = importlib.util.spec_from_file_location("commissure_offsets", _PATH)
co = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(co)


def test_bundle_centre_finds_the_near_bundle_not_a_brighter_structure_further_away():
    t = np.arange(-4.0, 4.001, 0.25)
    bundle = 0.6 * np.exp(-0.5 * ((t - 0.75) / 0.7) ** 2)
    other = 1.0 * np.exp(-0.5 * ((t + 3.8) / 0.5) ** 2)  # brighter, but 3.8 mm away
    assert abs(co.bundle_centre(t, 0.2 + bundle) - 0.75) < 0.05
    assert abs(co.bundle_centre(t, 0.2 + bundle + other, near=2.0) - 0.75) < 0.15
    assert co.bundle_centre(t, 0.2 + bundle + other, near=4.0) < -3.0  # allowed to look that far, it takes the other


def test_line_profile_samples_world_lines_through_the_affine():
    data = np.zeros((20, 20, 20), np.float32)
    data[:, :, 12] = 1.0  # a bright plane at voxel z = 12
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -20.0, -20.0]  # voxel 12 -> world z = 4 mm
    vol = Volume(data=data, affine=affine)
    offsets, values = co.line_profile(vol, np.array([0.0, 0.0, 0.0]), axis=2, reach=6.0, disk=1.0)
    assert abs(offsets[np.argmax(values)] - 4.0) < 1e-6
    assert abs(co.bundle_centre(offsets, values, near=5.0) - 4.0) < 0.3


def test_registration_offsets_report_an_annotation_shift_that_template_matching_cannot_see():
    """An image that is the template moved by a known translation, annotated 1.5 mm lower than the
    template's points carried by that translation: every registration (global rigid, affine, local
    rigid) recovers the move, so what it reports is the annotation shift, (0, 0, +1.5) mm."""
    from scipy.ndimage import gaussian_filter

    from jaxmed.data import Landmarks

    rng = np.random.default_rng(0)
    data = gaussian_filter(rng.random((40, 40, 40)), 2.5)
    data = ((data - data.min()) / np.ptp(data)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 3] = -20.0
    template = Volume(data=data, affine=affine)
    labels = ("AC", "PC", "genu of CC", "R ventral occipital horn")
    points = np.array([[0.0, 4.0, -2.0], [0.0, -6.0, 0.0], [3.0, 10.0, 5.0], [8.0, -12.0, 2.0]])
    move = np.array([1.0, -2.0, 1.0])  # the image's anatomy lies here relative to the template's
    moved = affine.copy()
    moved[:3, 3] += move
    image = Volume(data=data, affine=moved)
    shift = np.array([0.0, 0.0, -1.5])  # its raters click 1.5 mm lower
    annotated = Landmarks(labels, points + move + shift)
    from jaxmed.registration_baseline import BaselineConfig

    quick = BaselineConfig(loss="mi", factors=(2, 1), iterations=(60, 40), learning_rate=(0.5, 0.2), transform="affine",
                           rigid_levels=1, init="moments", samples=20_000)
    local = BaselineConfig(loss="mi", factors=(1,), iterations=(60,), learning_rate=(0.2,), transform="rigid")
    out = co.registration_offsets((template, Landmarks(labels, points)), {"colin27": (image, annotated)}, local_mm=24,
                                  affine=quick, local=local)
    methods = out["colin27"]
    assert set(methods) == {"rigid", "affine", "local rigid 24 mm"}
    for name, r in methods.items():
        for label in ("AC", "PC"):
            np.testing.assert_allclose(r[label], -shift, atol=0.3, err_msg=f"{name} {label}")
    # the other landmarks: the genu only (the occipital horn is left out); local fits report none
    assert methods["rigid"]["others_n"] == 1 and list(methods["rigid"]["others"]) == ["genu of CC"]
    np.testing.assert_allclose(methods["affine"]["others_median"], -shift, atol=0.3)
    assert "others_n" not in methods["local rigid 24 mm"]
