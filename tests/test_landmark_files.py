"""Landmark files: Slicer .fcsv / .mrk.json, CSV and JSON read as world RAS mm, written back exactly,
LPS converted from the header, and every malformed file refused with the file's name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmed.data.geometry import rotation_matrix, voxel_to_world, world_to_voxel
from jaxmed.data.landmark_files import read_landmarks, write_landmarks
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume
from jaxmed.errors import LandmarkError, OverwriteError

SUFFIXES = (".fcsv", ".mrk.json", ".csv", ".json")

# The first lines of afids_cnn/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.fcsv (Slicer 4.6, RAS,
# the `label` column numbers the points and `desc` names them).
AFIDS_FCSV = """\
# Markups fiducial file version = 4.6
# CoordinateSystem = 0
# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID
vtkMRMLMarkupsFiducialNode_1,-0.23099999999999998,2.93275,-4.899,0,0,0,1,1,1,0,1,AC,vtkMRMLScalarVolumeNode1
vtkMRMLMarkupsFiducialNode_2,-0.24125000000000002,-25.074749999999998,-2.169,0,0,0,1,1,1,0,2,PC,vtkMRMLScalarVolumeNode1
vtkMRMLMarkupsFiducialNode_3,0.19949999999999998,-37.268249999999995,-10.9115,0,0,0,1,1,1,0,3,infracollicular sulcus,vtkMRMLScalarVolumeNode1
vtkMRMLMarkupsFiducialNode_14,0.04425,-31.73675,0.76675,0,0,0,1,1,1,0,14,pineal gland,vtkMRMLScalarVolumeNode1
"""
AC = np.array([-0.23099999999999998, 2.93275, -4.899])
PC = np.array([-0.24125000000000002, -25.074749999999998, -2.169])


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _sample(n: int = 7, seed: int = 0) -> Landmarks:
    """Landmarks with awkward labels (comma, quote, brackets, non-ASCII) and full-precision coordinates."""
    rng = np.random.default_rng(seed)
    labels = ["AC", "PC", "R LV, at AC", 'say "hi"', "x [ y ]", "Ünïcode", "7"][:n]
    descs = ["anterior commissure", "", "comma, inside", "", "", "naïve", "numeric label"][:n]
    return Landmarks(tuple(labels), rng.normal(0, 60, (n, 3)) + rng.random((n, 3)) * 1e-7, tuple(descs))


def _oblique_affine() -> np.ndarray:
    """17 degrees about the oblique axis (1, 2, 3), spacing 0.8 / 1.2 / 2.5 mm, off-centre origin."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    theta = np.deg2rad(17.0)
    rot = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k  # Rodrigues
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.8, 1.2, 2.5])
    a[:3, 3] = [-91.3, 112.7, -40.05]
    return a


def _flipped_affine() -> np.ndarray:
    """Axes flipped (negative diagonal on x and z, as in an LAS/LPI scan), plus a small rotation."""
    a = np.eye(4)
    a[:3, :3] = rotation_matrix([3.0, -5.0, 11.0]) @ np.diag([-0.8, 1.2, -2.5])
    a[:3, 3] = [90.0, -126.0, 72.0]
    return a


# ------------------------------------------------------------------------------------------------
# reading the Slicer formats


def test_afids_fcsv_labels_come_from_desc(tmp_path):
    lm = read_landmarks(_write(tmp_path, "afids.fcsv", AFIDS_FCSV))
    assert lm.labels == ("AC", "PC", "infracollicular sulcus", "pineal gland")
    assert lm.descriptions == ("1", "2", "3", "14")
    np.testing.assert_array_equal(lm["AC"], AC)
    np.testing.assert_array_equal(lm["PC"], PC)
    assert lm.source.endswith("afids.fcsv")


def test_label_field_choices(tmp_path):
    path = _write(tmp_path, "afids.fcsv", AFIDS_FCSV)
    by_label = read_landmarks(path, label_field="label")
    assert by_label.labels[:2] == ("1", "2") and by_label.descriptions[:2] == ("AC", "PC")
    np.testing.assert_array_equal(by_label["1"], AC)
    assert read_landmarks(path, label_field="desc").labels == read_landmarks(path).labels
    # auto keeps the labels when they are names, or when the descriptions are not unique names
    named = AFIDS_FCSV.replace(",0,1,AC,", ",0,AC,first,").replace(",0,2,PC,", ",0,PC,second,")
    assert read_landmarks(_write(tmp_path, "named.fcsv", named)).labels[:2] == ("AC", "PC")
    dup = AFIDS_FCSV.replace(",PC,", ",AC,")
    assert read_landmarks(_write(tmp_path, "dup.fcsv", dup)).labels[:2] == ("1", "2")
    with pytest.raises(LandmarkError, match="label_field"):
        read_landmarks(path, label_field="name")


def test_fcsv_without_header_lines_uses_standard_columns_and_ras(tmp_path):
    text = "1,10.5,-20.25,30,0,0,0,1,1,1,0,AC,anterior,\n2,-1,-2,-3,0,0,0,1,1,1,0,PC,,\n"
    lm = read_landmarks(_write(tmp_path, "bare.fcsv", text))
    assert lm.labels == ("AC", "PC") and lm.descriptions == ("anterior", "")
    np.testing.assert_array_equal(lm.positions, [[10.5, -20.25, 30.0], [-1.0, -2.0, -3.0]])


def test_fcsv_honours_a_reordered_columns_line(tmp_path):
    text = "# CoordinateSystem = RAS\n# columns = label,x,y,z,sel,vis\nAC,1,2,3,1,1\nPC,4,5,6,1,1\n"
    lm = read_landmarks(_write(tmp_path, "slicer3.fcsv", text))
    assert lm.labels == ("AC", "PC")
    np.testing.assert_array_equal(lm.positions, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("system_line", ["# CoordinateSystem = LPS", "# CoordinateSystem = 1", "# CoordinateSystem = lps"])
def test_lps_fcsv_reads_as_ras(tmp_path, system_line):
    text = (
        "# Markups fiducial file version = 5.6\n"
        f"{system_line}\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "1,0.231,-2.93275,-4.899,0,0,0,1,1,1,0,AC,,\n"
        '2,12.5,40.25,7.0,0,0,0,1,1,1,0,"R LV, at AC",lateral ventricle,\n'
    )
    lm = read_landmarks(_write(tmp_path, "lps.fcsv", text))
    assert lm.labels == ("AC", "R LV, at AC")
    np.testing.assert_array_equal(lm["AC"], [-0.231, 2.93275, -4.899])
    np.testing.assert_array_equal(lm["R LV, at AC"], [-12.5, -40.25, 7.0])


def test_lps_mrk_json_reads_as_ras(tmp_path):
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "controlPoints": [
                    {"id": "1", "label": "AC", "description": "anterior commissure", "position": [0.231, -2.93275, -4.899],
                     "positionStatus": "defined"},
                    {"id": "2", "label": "PC", "description": "", "position": [0.24125, 25.07475, -2.169], "positionStatus": "defined"},
                ],
            }
        ],
    }
    lm = read_landmarks(_write(tmp_path, "points.mrk.json", json.dumps(doc)))
    assert lm.labels == ("AC", "PC") and lm.descriptions == ("anterior commissure", "")
    np.testing.assert_array_equal(lm.positions, [[-0.231, 2.93275, -4.899], [-0.24125, -25.07475, -2.169]])
    # the same document under a plain .json name is recognised by its "markups" key
    np.testing.assert_array_equal(read_landmarks(_write(tmp_path, "points.json", json.dumps(doc))).positions, lm.positions)


def test_mrk_json_skips_unplaced_points_with_a_warning(tmp_path):
    doc = {"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"label": "AC", "position": [1, 2, 3], "positionStatus": "defined"},
        {"label": "PC", "position": [0, 0, 0], "positionStatus": "undefined"},
        {"label": "pineal"},
    ]}]}
    with pytest.warns(UserWarning, match="PC, pineal"):
        lm = read_landmarks(_write(tmp_path, "partial.mrk.json", json.dumps(doc)))
    assert lm.labels == ("AC",)


def test_plain_csv_and_json(tmp_path):
    csv_text = "Label, X, Y, Z, confidence\nAC,1.5,-2,3e1,0.9\n\n PC, 4, 5, 6, 0.5\n"
    lm = read_landmarks(_write(tmp_path, "points.csv", csv_text))
    assert lm.labels == ("AC", "PC")
    np.testing.assert_array_equal(lm.positions, [[1.5, -2, 30], [4, 5, 6]])
    doc = {"coordinate_system": "LPS", "landmarks": {"AC": [1.5, -2, 30], "PC": [4, 5, 6]}}
    lm = read_landmarks(_write(tmp_path, "points.json", json.dumps(doc)))
    np.testing.assert_array_equal(lm.positions, [[-1.5, 2, 30], [-4, -5, 6]])


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("system", ["RAS", "LPS"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_read_round_trip(tmp_path, suffix, system):
    lm = _sample()
    path = write_landmarks(lm, tmp_path / f"out{suffix}", coordinate_system=system)
    assert path == tmp_path / f"out{suffix}"
    back = read_landmarks(path)
    assert back.labels == lm.labels
    assert back.descriptions == lm.descriptions
    np.testing.assert_allclose(back.positions, lm.positions, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back.positions, lm.positions)  # shortest-repr floats: bit exact


@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_written_files_state_their_coordinate_system(tmp_path, system):
    lm = _sample(3)
    stored = np.array([-1.0, -1.0, 1.0]) if system == "LPS" else np.ones(3)
    fcsv = write_landmarks(lm, tmp_path / "a.fcsv", coordinate_system=system).read_text().splitlines()
    assert fcsv[:3] == [
        "# Markups fiducial file version = 4.11",
        f"# CoordinateSystem = {system}",
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID",
    ]
    assert float(fcsv[3].split(",")[1]) == stored[0] * lm.positions[0, 0]
    markup = json.loads(write_landmarks(lm, tmp_path / "a.mrk.json", coordinate_system=system).read_text())["markups"][0]
    assert markup["coordinateSystem"] == system and markup["coordinateUnits"] == "mm" and markup["type"] == "Fiducial"
    cp = markup["controlPoints"][0]
    assert cp["label"] == "AC" and cp["description"] == "anterior commissure" and cp["positionStatus"] == "defined"
    np.testing.assert_array_equal(cp["position"], stored * lm.positions[0])
    csv_lines = write_landmarks(lm, tmp_path / "a.csv", coordinate_system=system).read_text().splitlines()
    assert csv_lines[0] == ("# coordinate_system = LPS" if system == "LPS" else "label,x,y,z,description")
    doc = json.loads(write_landmarks(lm, tmp_path / "a.json", coordinate_system=system).read_text())
    assert doc["coordinate_system"] == system
    np.testing.assert_array_equal(doc["landmarks"]["AC"], stored * lm.positions[0])


@pytest.mark.parametrize("make_affine", [_oblique_affine, _flipped_affine], ids=["oblique", "flipped"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_file_world_voxel_world_round_trip(tmp_path, make_affine, suffix):
    affine = make_affine()
    rng = np.random.default_rng(1)
    voxels = rng.uniform(0, [180, 200, 70], (6, 3))
    world = voxel_to_world(affine, voxels)
    labels = tuple(f"P{i}" for i in range(len(world)))
    for system in ("RAS", "LPS"):
        path = write_landmarks(Landmarks(labels, world), tmp_path / f"{system}{suffix}", coordinate_system=system)
        read = read_landmarks(path)
        assert read.labels == labels
        vox_back = world_to_voxel(affine, read.positions)
        np.testing.assert_allclose(voxel_to_world(affine, vox_back), world, rtol=0, atol=1e-4)
        np.testing.assert_allclose(vox_back, voxels, rtol=0, atol=1e-4 / 2.5)
    assert np.all(np.abs(world - voxels) > 1e-3)  # the affine really moved the points


def test_file_world_voxel_world_on_a_real_file(tmp_path):
    lm = read_landmarks(_write(tmp_path, "afids.fcsv", AFIDS_FCSV))
    for affine in (_oblique_affine(), _flipped_affine()):
        again = voxel_to_world(affine, world_to_voxel(affine, lm.positions))
        np.testing.assert_allclose(again, lm.positions, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# errors


def _fcsv(rows: str, system: str = "RAS") -> str:
    return (
        "# Markups fiducial file version = 4.11\n"
        f"# CoordinateSystem = {system}\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n" + rows
    )


MRK_EMPTY = json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": []}]})
BAD_FILES = {
    "empty fcsv": ("empty.fcsv", "", "empty"),
    "empty mrk": ("empty.mrk.json", "  \n", "empty"),
    "empty csv": ("empty.csv", "", "empty"),
    "empty json": ("empty.json", "", "empty"),
    "fcsv header only": ("nopoints.fcsv", _fcsv(""), "no landmarks"),
    "csv header only": ("nopoints.csv", "label,x,y,z\n", "no landmarks"),
    "json no points": ("nopoints.json", '{"coordinate_system": "RAS", "landmarks": {}}', "no landmarks"),
    "mrk no points": ("nopoints.mrk.json", MRK_EMPTY, "no landmarks"),
    "mrk no markups": ("nomarkups.mrk.json", '{"markups": []}', "markups"),
    "json no landmarks key": ("nokey.json", '{"AC": [1, 2, 3]}', "landmarks"),
    "csv without z": ("noz.csv", "label,x,y\nAC,1,2\n", "'z'"),
    "csv without header": ("nohead.csv", "AC,1,2,3\n", "lacks column"),
    "csv short row": ("short.csv", "label,x,y,z\nAC,1,2\n", "line 2"),
    "fcsv short row": ("short.fcsv", _fcsv("1,1.0,2.0\n"), "line 4"),
    "fcsv columns without z": ("noz.fcsv", "# columns = id,x,y,label\n1,1,2,AC\n", "'z'"),
    "fcsv non-numeric": ("nan.fcsv", _fcsv("1,1.0,abc,3.0,0,0,0,1,1,1,0,AC,,\n"), "'AC'.*'abc'"),
    "fcsv NaN": ("nan2.fcsv", _fcsv("1,1.0,nan,3.0,0,0,0,1,1,1,0,PC,,\n"), "'PC'.*not finite"),
    "csv non-numeric": ("nan.csv", "label,x,y,z\nAC,1,2,3\nPC,4,five,6\n", "line 3 .*'PC'.*'five'"),
    "json non-numeric": ("nan.json", '{"landmarks": {"AC": [1, "2x", 3]}}', "'AC'.*'2x'"),
    "json wrong length": ("short.json", '{"landmarks": {"AC": [1, 2]}}', "'AC'"),
    "mrk non-numeric": (
        "nan.mrk.json",
        json.dumps({"markups": [{"controlPoints": [{"label": "AC", "position": [1, None, 3]}]}]}),
        "'AC'",
    ),
    "invalid json": ("broken.json", '{"landmarks": {"AC": [1, 2, 3]', "invalid JSON"),
    "invalid mrk json": ("broken.mrk.json", "{markups: []}", "invalid JSON"),
    "json not an object": ("list.json", "[1, 2, 3]", "JSON object"),
    "fcsv unknown system": ("ijk.fcsv", _fcsv("1,1,2,3,0,0,0,1,1,1,0,AC,,\n", system="IJK"), "coordinate system 'IJK'"),
    "fcsv numeric system 2": ("two.fcsv", _fcsv("1,1,2,3,0,0,0,1,1,1,0,AC,,\n", system="2"), "coordinate system"),
    "mrk unknown system": (
        "las.mrk.json",
        json.dumps({"markups": [{"coordinateSystem": "LAS", "controlPoints": [{"label": "AC", "position": [1, 2, 3]}]}]}),
        "coordinate system 'LAS'",
    ),
    "json unknown system": ("xyz.json", '{"coordinate_system": "XYZ", "landmarks": {"AC": [1, 2, 3]}}', "'XYZ'"),
    "csv unknown system": ("xyz.csv", "# coordinate_system = voxel\nlabel,x,y,z\nAC,1,2,3\n", "'voxel'"),
    "json units": ("cm.json", '{"units": "cm", "landmarks": {"AC": [1, 2, 3]}}', "'cm'"),
    "duplicate labels": ("dup.csv", "label,x,y,z\nAC,1,2,3\nAC,4,5,6\n", "duplicate"),
    "unknown suffix": ("points.txt", "label,x,y,z\nAC,1,2,3\n", "unknown landmark file suffix"),
    "no suffix": ("points", "label,x,y,z\nAC,1,2,3\n", "unknown landmark file suffix"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_files_raise_landmark_error_naming_the_file(tmp_path, case):
    name, text, problem = BAD_FILES[case]
    path = _write(tmp_path, name, text)
    with pytest.raises(LandmarkError, match=problem) as err:
        read_landmarks(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_missing_file(tmp_path, suffix):
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(LandmarkError, match="not found") as err:
        read_landmarks(path)
    assert str(path) in str(err.value)


def test_directory_is_not_a_landmark_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(LandmarkError, match="dir.csv: is not a file"):
        read_landmarks(tmp_path / "dir.csv")


def test_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(LandmarkError, match="out.fcsv.*'voxel'"):
        write_landmarks(_sample(2), tmp_path / "out.fcsv", coordinate_system="voxel")
    with pytest.raises(LandmarkError, match=r"out.txt.*suffix"):
        write_landmarks(_sample(2), tmp_path / "out.txt")
    with pytest.raises(LandmarkError, match="empty.csv.*empty landmark set"):
        write_landmarks(Landmarks((), np.zeros((0, 3))), tmp_path / "empty.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_overwrite_refused_and_original_kept(tmp_path, suffix):
    path = write_landmarks(_sample(3), tmp_path / f"mine{suffix}")
    original = path.read_bytes()
    with pytest.raises(OverwriteError, match=f"mine{suffix}"):
        write_landmarks(_sample(5, seed=9), path)
    assert path.read_bytes() == original
    write_landmarks(_sample(5, seed=9), path, overwrite=True)
    assert len(read_landmarks(path)) == 5
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind


def test_unknown_label_and_outside_image_raise(tmp_path):
    lm = read_landmarks(_write(tmp_path, "afids.fcsv", AFIDS_FCSV))
    with pytest.raises(LandmarkError, match="afids.fcsv.*'genu'.*AC, PC"):
        lm.index("genu")
    with pytest.raises(LandmarkError, match="'genu'"):
        lm.select(["AC", "genu"])
    # a 1 mm grid of 20^3 voxels around AC contains AC but not PC (28 mm behind)
    affine = np.eye(4)
    affine[:3, 3] = AC - 10
    volume = Volume(np.zeros((20, 20, 20), np.float32), affine, source="small.nii.gz")
    lm.check_inside(volume, ["AC"])
    with pytest.raises(LandmarkError, match=r"afids.fcsv.*outside the image small.nii.gz.*PC at"):
        lm.check_inside(volume, ["AC", "PC"])
