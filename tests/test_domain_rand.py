"""Domain randomisation: tissue contrast, skull removal, thick slices and blur change intensities only,
deterministically, with the claimed effects; landmarks stay exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxmed.data import domain_rand as dr
from jaxmed.data import geometry
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.synth import SynthConfig, synthesize_subject
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError

N, SP = 50, 2.0
# radii (mm) of the phantom head's shells and their T1-like intensities
SHELLS = ((18.0, 0.9, "wm"), (30.0, 0.6, "gm"), (36.0, 0.12, "csf"), (42.0, 0.3, "skull"), (48.0, 0.85, "scalp"))
GEOMETRY_ONLY = SynthConfig(bias_max=0.0, gamma_range=(1.0, 1.0), noise_std_range=(0.0, 0.0), spacings=((2.0, 2.0, 2.0),),
                            orientations=("RAS", "LPS"), warp_max_mm=2.0)
DR = dataclasses.replace(GEOMETRY_ONLY, tissue_classes=5, p_tissue=1.0, class_std_range=(0.0, 0.0), p_skull_strip=0.5,
                         p_thick_slice=0.5, blur_sigma_mm_range=(0.0, 1.0), sharpen_range=(0.0, 0.3))


def _radius(vol: Volume) -> np.ndarray:
    world = geometry.voxel_to_world(vol.affine, np.stack(np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij"), -1))
    return np.linalg.norm(world, axis=-1)


@pytest.fixture(scope="module")
def head():
    """50^3 voxels of 2 mm centred on 0: white matter, grey matter, fluid, a dark skull and a bright scalp."""
    affine = geometry.axis_aligned_affine(SP, np.full(3, -SP * (N - 1) / 2))
    vol = Volume(np.zeros((N, N, N), np.float32), affine, source="test-head")
    r = _radius(vol)
    data = np.zeros(vol.shape, np.float32)
    for radius, value, _ in reversed(SHELLS):
        data[r <= radius] = value
    lms = Landmarks(("C", "D"), np.array([[0.0, 0.0, 0.0], [6.0, -8.0, 10.0]]), source="test-head landmarks")
    return vol.replace(data=data), lms


def _shell(r: np.ndarray, name: str) -> np.ndarray:
    radii = [0.0] + [s[0] for s in SHELLS]
    i = [s[2] for s in SHELLS].index(name)
    return (r > radii[i] + 2.0) & (r < radii[i + 1] - 2.0)


def test_kmeans_1d_finds_the_modes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.01, 4000) for m in (0.1, 0.5, 0.8)])
    np.testing.assert_allclose(dr.kmeans_1d(x, 3), [0.1, 0.5, 0.8], atol=0.01)
    np.testing.assert_array_equal(dr.kmeans_1d(x, 3), dr.kmeans_1d(x, 3))  # no random state


def test_brain_mask_keeps_the_brain_and_removes_the_skull(head):
    vol, _ = head
    model = dr.tissue_model(vol.data, vol.spacing, 5)
    r = _radius(vol)
    assert model.centres[0] == 0 and np.all(np.diff(model.centres) > 0)
    for name in ("wm", "gm"):
        assert model.mask[_shell(r, name)].all(), name
    for name in ("skull", "scalp"):
        assert not model.mask[_shell(r, name)].any(), name
    # signed distance: negative inside, grows outward by about the distance in mm
    assert model.signed_distance_mm[r < 10].max() < 0
    assert abs(float(np.median(model.signed_distance_mm[(r > 44) & (r < 46)])) - 15.0) < 2.5  # mask edge at the grey matter (30 mm)


def test_skull_strip_zeroes_the_scalp_and_keeps_the_brain(head):
    vol, _ = head
    model = dr.tissue_model(vol.data, vol.spacing, 5)
    r = _radius(vol)
    tissue = {"mode": "template", "means": [], "stds": [], "skull_strip": True, "mask_margin_mm": 0.0}
    out = dr.randomise_template(vol.data, model, tissue, np.random.default_rng(0))
    assert (out[_shell(r, "scalp")] == 0).all() and (out[_shell(r, "skull")] == 0).all()
    np.testing.assert_array_equal(out[_shell(r, "gm")], vol.data[_shell(r, "gm")])
    grown = dr.randomise_template(vol.data, model, dict(tissue, mask_margin_mm=8.0), np.random.default_rng(0))
    assert np.count_nonzero(grown) > np.count_nonzero(out)


def test_inversion_flips_the_order_of_tissue_classes(head):
    vol, _ = head
    model = dr.tissue_model(vol.data, vol.spacing, 5)
    cfg = dataclasses.replace(DR, p_invert=1.0, p_skull_strip=0.0)
    r = _radius(vol)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tissue = dr.draw_tissue(rng, len(model.centres), cfg)
        assert tissue["mode"] == "inverted" and tissue["means"][0] == 0
        assert np.all(np.diff(tissue["means"][1:]) <= 0)
        out = dr.randomise_template(vol.data, model, tissue, rng)
        wm, gm, csf = (float(np.mean(out[_shell(r, n)])) for n in ("wm", "gm", "csf"))
        assert csf > gm > wm  # T1: wm > gm > csf


def test_class_means_differ_between_subjects(head):
    vol, lms = head
    cfg = dataclasses.replace(DR, p_skull_strip=0.0, p_thick_slice=0.0, blur_sigma_mm_range=(0.0, 0.0), sharpen_range=(0.0, 0.0))
    a, b = (synthesize_subject(vol, lms, s, cfg) for s in (1, 2))
    assert a.params["domain"]["tissue"]["means"] != b.params["domain"]["tissue"]["means"]
    # same pose? no; compare the intensity at the same anatomy: the central white matter
    va, vb = (float(s.volume.data[tuple(np.round(s.volume.world_to_voxel(s.landmarks["C"])).astype(int))]) for s in (a, b))
    assert abs(va - vb) > 0.02


def test_landmarks_and_geometry_unchanged_and_deterministic(head):
    vol, lms = head
    for seed in (3, 4, 5, 6):
        plain = synthesize_subject(vol, lms, seed, GEOMETRY_ONLY)
        one, two = (synthesize_subject(vol, lms, seed, DR) for _ in range(2))
        np.testing.assert_array_equal(one.volume.data, two.volume.data)
        np.testing.assert_array_equal(one.volume.affine, two.volume.affine)
        np.testing.assert_array_equal(one.landmarks.positions, plain.landmarks.positions)
        for key in ("rotation_deg", "translation_mm", "scale", "template_to_subject_affine", "gamma", "noise_std"):
            assert one.params[key] == plain.params[key], key
        one.landmarks.check_inside(one.volume)
        d = one.params["domain"]["degrade"]
        if d["thick_axis"] < 0:
            np.testing.assert_array_equal(one.volume.affine, plain.volume.affine)
        else:  # thick slices: voxel 0 stays, that axis's step grows by an integer factor
            np.testing.assert_allclose(one.volume.affine[:3, 3], plain.volume.affine[:3, 3])
            k = one.volume.spacing[d["thick_axis"]] / plain.volume.spacing[d["thick_axis"]]
            assert k == round(k) and k >= 2


def test_thick_slices_blur_and_sharpen():
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (20, 20, 30)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    thick, aff = dr.degrade(data, affine, {"thick_axis": 2, "thickness_mm": 3.0, "blur_sigma_mm": 0.0, "sharpen": 0.0}, 10.0)
    assert thick.shape == (20, 20, 10) and aff[2, 2] == 3.0 and aff[0, 0] == 1.0
    blurred, _ = dr.degrade(data, affine, {"thick_axis": -1, "thickness_mm": 0.0, "blur_sigma_mm": 1.0, "sharpen": 0.0}, 10.0)
    sharp, _ = dr.degrade(data, affine, {"thick_axis": -1, "thickness_mm": 0.0, "blur_sigma_mm": 0.0, "sharpen": 0.5}, 10.0)
    assert blurred.std() < 0.6 * data.std() and sharp.std() > data.std()


@pytest.mark.parametrize("kwargs", [{"p_skull_strip": 0.5}, {"p_invert": 0.2}, {"tissue_classes": 2},
                                    {"tissue_classes": 5, "p_tissue": 1.5}, {"blur_sigma_mm_range": (1.0, 0.5)}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ConfigError):
        SynthConfig(**kwargs)


def test_default_config_is_not_randomised():
    assert not SynthConfig().domain_randomised and DR.domain_randomised


def test_synth_command_writes_randomised_subjects_and_a_sheet(head, tmp_path):
    import json

    import nibabel as nib
    import yaml

    from jaxmed.cli import main
    from jaxmed.data.landmark_files import write_landmarks

    vol, lms = head
    nib.save(nib.Nifti1Image(vol.data, vol.affine), tmp_path / "head.nii.gz")
    write_landmarks(lms, tmp_path / "head.fcsv")
    fields = {k: list(v) if isinstance(v, tuple) and k != "spacings" and k != "orientations" else v
              for k, v in dataclasses.asdict(DR).items() if k not in ("spacings", "orientations")}
    fields.update(spacings=[[2.0, 2.0, 2.0]], orientations=["RAS"], p_invert=1.0, p_thick_slice=0.0)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"data": {"source": "afids", "synth": fields}}))
    out, sheet = tmp_path / "subjects", tmp_path / "sheet.png"
    argv = ["data", "synth", "-n", "2", "-o", str(out), "--template", str(tmp_path / "head.nii.gz"),
            "--landmarks", str(tmp_path / "head.fcsv"), "--synth", str(tmp_path / "run.yaml"), "--sheet", str(sheet)]
    assert main(argv) == 0
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "population.json").read_text())
    assert [s["params"]["domain"]["tissue"]["mode"] for s in manifest["subjects"]] == ["inverted", "inverted"]
    assert main(argv) != 0  # nothing is overwritten without --overwrite
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"p_invert": 2.0, "tissue_classes": 5}))
    assert main(argv[:-4] + ["--synth", str(tmp_path / "bad.yaml")]) != 0


def test_sheet_refuses_a_subject_without_the_landmark(head, tmp_path):
    from jaxmed.errors import LandmarkError
    from jaxmed.viz import subject_sheet

    with pytest.raises(LandmarkError):
        subject_sheet([head], tmp_path / "s.png", label="AC")
    assert not (tmp_path / "s.png").exists()
