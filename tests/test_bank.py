"""VolumeBank: padding without clamping, pyramid geometry, storage dtypes, argument (not constant) semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data import geometry
from jaxmed.data.bank import build_bank
from jaxmed.data.phantoms import blob_phantom
from jaxmed.errors import ConfigError, LandmarkError


@pytest.fixture(scope="module")
def subjects():
    a = blob_phantom(shape=(20, 24, 18), spacing=2.0, n_landmarks=3, seed=0)
    b = blob_phantom(shape=(22, 18, 20), spacing=2.0, n_landmarks=3, seed=1)
    return [a, b]


def _np_crop(data, center, d):
    """Reference: zero-pad generously and slice with NumPy."""
    pad = d
    p = np.pad(data, pad)
    lo = np.asarray(center) - d // 2 + pad
    return p[lo[0] : lo[0] + d, lo[1] : lo[1] + d, lo[2] : lo[2] + d]


def test_crops_at_borders_never_clamp(subjects):
    bank = build_bank(subjects, max_crop=9)
    assert bank.margin == 5 and bank.max_crop == 9
    crop = jax.jit(lambda bank, i, c: bank.crop(i, c, 9))
    for i, (vol, _) in enumerate(subjects):
        for c in [(0, 0, 0), np.array(vol.shape) - 1, (0, vol.shape[1] - 1, 3), (5, 6, 7)]:
            got = np.asarray(crop(bank, i, jnp.asarray(c, jnp.int32)))
            np.testing.assert_array_equal(got, _np_crop(vol.data, c, 9))


def test_shapes_affines_and_landmarks_per_level(subjects):
    bank = build_bank(subjects, factors=(1, 2, 4), max_crop=5)
    assert bank.n_volumes == 2 and bank.n_levels == 3 and bank.labels == ("L0", "L1", "L2")
    np.testing.assert_array_equal(bank.shapes[0], [v.shape for v, _ in subjects])
    np.testing.assert_array_equal(bank.shapes[2, 0], np.ceil(np.array(subjects[0][0].shape) / 4))
    for lvl, f in enumerate(bank.factors):
        for n, (vol, lm) in enumerate(subjects):
            # landmarks in level voxels map back to the same world points
            world = geometry.voxel_to_world(np.asarray(bank.affines[lvl, n], np.float64), np.asarray(bank.landmarks_vox[lvl, n]))
            np.testing.assert_allclose(world, lm.positions, atol=1e-4)
            # a level voxel is the mean of the f^3 level-0 voxels it covers, centred where the affine says
            j = np.array([1, 2, 1])
            block = vol.data[j[0] * f : (j[0] + 1) * f, j[1] * f : (j[1] + 1) * f, j[2] * f : (j[2] + 1) * f]
            m = bank.margin
            assert np.isclose(float(bank.levels[lvl][n, j[0] + m, j[1] + m, j[2] + m]), block.mean(), atol=1e-6)
            centre0 = geometry.voxel_to_world(vol.affine, j * f + (f - 1) / 2)
            np.testing.assert_allclose(geometry.voxel_to_world(np.asarray(bank.affines[lvl, n], np.float64), j), centre0, atol=1e-4)
    np.testing.assert_allclose(bank.landmarks_world, np.stack([lm.positions for _, lm in subjects]), atol=1e-5)


@pytest.mark.parametrize("dtype,atol", [("uint8", 0.5 / 255 + 1e-6), ("bfloat16", 4e-3), ("float32", 0.0)])
def test_storage_dtypes(subjects, dtype, atol):
    bank = build_bank(subjects, dtype=dtype, max_crop=5)
    assert bank.levels[0].dtype == jnp.dtype(dtype)
    m = bank.margin
    vol = subjects[0][0]
    stored = bank.levels[0][0, m : m + vol.shape[0], m : m + vol.shape[1], m : m + vol.shape[2]]
    np.testing.assert_allclose(np.asarray(bank.to_intensity(stored)), vol.data, atol=atol)
    assert bank.nbytes == sum(a.size for a in bank.levels) * jnp.dtype(dtype).itemsize


def test_bank_is_an_argument_not_a_constant(subjects):
    """Two banks of the same shapes reuse one compiled program; the data is not baked in."""
    traces = []

    @jax.jit
    def total(bank):
        traces.append(1)
        return bank.levels[0].astype(jnp.float32).sum()

    b1 = build_bank(subjects, max_crop=5)
    b2 = build_bank([subjects[1], subjects[0]], labels=("L0", "L1", "L2"), max_crop=5)
    assert float(total(b1)) == pytest.approx(float(total(b2)), rel=1e-5)
    scaled = b1.replace(levels=(b1.levels[0] * 2,))
    assert float(total(scaled)) == pytest.approx(2 * float(total(b1)), rel=1e-5)
    assert len(traces) == 1
    hlo = jax.jit(lambda b: b.levels[0].sum()).lower(b1).as_text()
    assert len(hlo) < 50_000  # no volume inlined as a constant


def test_bad_input(subjects):
    with pytest.raises(LandmarkError, match="no landmark labelled 'nope'"):
        build_bank(subjects, labels=("L0", "nope"))
    vol, lm = subjects[0]
    far = lm.with_positions(lm.positions + np.array([500.0, 0, 0]))
    with pytest.raises(LandmarkError, match="outside the image"):
        build_bank([(vol, far)])
    with pytest.raises(ConfigError, match="dtype"):
        build_bank(subjects, dtype="int16")
    with pytest.raises(ConfigError, match="factors"):
        build_bank(subjects, factors=(2, 4))
    with pytest.raises(ConfigError, match="no subjects"):
        build_bank([])
    with pytest.raises(LandmarkError, match="volume bank has no landmark 'AC'"):
        build_bank(subjects, max_crop=3).label_index("AC")


def test_packed_pyramid_is_optional_derived_and_crops_every_level(subjects):
    """``packed=True`` adds one (N, V) buffer holding every level (off by default); ``replace`` with
    new levels rebuilds it; ``bank.crops`` at traced per-window levels equals NumPy slicing of each
    window's level with and without it, and a static level crops that level."""
    from jaxmed.ops.crop import pack_levels

    plain = build_bank(subjects, factors=(1, 2, 4), max_crop=5)
    packed = build_bank(subjects, factors=(1, 2, 4), max_crop=5, packed=True)
    assert plain.packed is None and build_bank(subjects, max_crop=5).packed is None
    np.testing.assert_array_equal(np.asarray(packed.packed), pack_levels([np.asarray(a) for a in packed.levels]))
    assert packed.nbytes == 2 * plain.nbytes
    assert packed.level_shapes == tuple(a.shape[1:] for a in packed.levels)
    doubled = packed.replace(levels=tuple(a * 2 for a in packed.levels))
    np.testing.assert_array_equal(np.asarray(doubled.packed), 2 * np.asarray(packed.packed))
    assert plain.replace(levels=plain.levels).packed is None

    rng = np.random.default_rng(0)
    m, d = plain.margin, 5
    lv = rng.integers(0, 3, size=(4, 6)).astype(np.int32)
    vol = rng.integers(0, 2, size=(4, 6)).astype(np.int32)
    ext = np.asarray(plain.shapes)[lv, vol]  # (4, 6, 3) each window's level extent
    cen = np.minimum(rng.integers(0, 30, size=(4, 6, 3)), ext - 1).astype(np.int32)
    cen[0, 0], cen[0, 1] = 0, ext[0, 1] - 1  # corners
    crops = jax.jit(lambda b, l, i, c: b.crops(i, c, d, l))
    for bank in (plain, packed):
        out = np.asarray(crops(bank, lv, vol, cen))
        assert out.shape == (4, 6, d, d, d)
        for ij in np.ndindex(4, 6):
            level = np.asarray(bank.levels[lv[ij]][vol[ij]])
            lo = cen[ij] + m - d // 2
            np.testing.assert_array_equal(out[ij], level[lo[0] : lo[0] + d, lo[1] : lo[1] + d, lo[2] : lo[2] + d])
    static = np.asarray(jax.jit(lambda b, i, c: b.crops(i, c, d, 1))(packed, vol, np.minimum(cen, 4)))
    single = np.asarray(jax.vmap(jax.vmap(lambda i, c: packed.crop(i, c, d, level=1)))(vol, np.minimum(cen, 4)))
    np.testing.assert_array_equal(static, single)


def test_bucket_shapes_and_padding_keep_every_crop_and_true_extent(subjects):
    bank = build_bank(subjects, factors=(1, 2), max_crop=5, packed=True)
    shapes = bank.bucket_shapes(4)  # level-0 extents to a multiple of 4 * 2 = 8 voxels, plus the margins
    m = bank.margin
    ext0 = np.asarray(bank.levels[0].shape[1:]) - 2 * m
    assert shapes[0] == tuple(int(-(-e // 8) * 8 + 2 * m) for e in ext0)
    assert shapes[1] == tuple(int((s - 2 * m) // 2 + 2 * m) for s in shapes[0])
    padded = bank.padded_to(shapes)
    assert padded.level_shapes == tuple(shapes)
    np.testing.assert_array_equal(padded.shapes, bank.shapes)  # the true extents stay
    assert padded.packed is not None and padded.packed.shape[1] > bank.packed.shape[1]  # derived copy rebuilt
    for lvl in range(bank.n_levels):  # every window of the original bank is unchanged
        for i in range(bank.n_volumes):
            c = jnp.asarray(np.asarray(bank.shapes[lvl, i]) - 1, jnp.int32)
            np.testing.assert_array_equal(np.asarray(padded.crop(i, c, 5, level=lvl)), np.asarray(bank.crop(i, c, 5, level=lvl)))
    assert bank.padded_to(bank.level_shapes).levels[0] is bank.levels[0]  # nothing to pad: the same array
    with pytest.raises(ValueError, match="larger than the target"):
        bank.padded_to([tuple(s - 1 for s in bank.level_shapes[0]), shapes[1]])


def test_a_fixed_full_scale_stores_a_volume_alike_whatever_shares_its_bank():
    """uint8 banks scale to their own maximum unless ``full_scale`` is given: then a volume's stored
    values do not depend on the other volumes of the bank (a real image detected alone is stored as
    it was among training subjects), intensities above it are clipped, and bad values are refused."""
    from jaxmed.data import Volume
    from jaxmed.data.sources import DataConfig

    vol, lm = blob_phantom(shape=(20, 20, 20), spacing=2.0, n_landmarks=2, seed=0)
    data = np.asarray(vol.data, np.float32) / float(np.max(vol.data))  # max 1.0, like a normalised image
    dim = Volume(data, vol.affine)
    bright = Volume(np.minimum(1.2 * data, 1.2), vol.affine)  # a synthetic subject up to clip_max 1.2
    alone = build_bank([(dim, lm)], dtype="uint8", factors=(1, 2), max_crop=5)
    shared = build_bank([(dim, lm), (bright, lm)], dtype="uint8", factors=(1, 2), max_crop=5)
    assert not np.array_equal(np.asarray(alone.levels[0][0]), np.asarray(shared.levels[0][0]))  # the old coupling
    fixed_alone = build_bank([(dim, lm)], dtype="uint8", factors=(1, 2), max_crop=5, full_scale=1.2)
    fixed_shared = build_bank([(dim, lm), (bright, lm)], dtype="uint8", factors=(1, 2), max_crop=5, full_scale=1.2)
    for level in range(2):
        np.testing.assert_array_equal(np.asarray(fixed_alone.levels[level][0]), np.asarray(fixed_shared.levels[level][0]))
    np.testing.assert_array_equal(np.asarray(fixed_shared.levels[0][1]), np.asarray(shared.levels[0][1]))  # max 1.2 here
    assert float(fixed_alone.intensity_scale) == pytest.approx(1.2 / 255)
    m = fixed_alone.margin
    stored = np.asarray(fixed_alone.levels[0][0])[m:m + 20, m:m + 20, m:m + 20]
    np.testing.assert_allclose(stored * float(fixed_alone.intensity_scale), data, atol=0.5 * 1.2 / 255 + 1e-6)
    clipped = build_bank([(bright, lm)], dtype="uint8", max_crop=5, full_scale=0.6)
    assert int(np.asarray(clipped.levels[0]).max()) == 255
    f32 = build_bank([(bright, lm)], dtype="float32", max_crop=5, full_scale=0.6)  # float banks: as they are
    assert float(np.asarray(f32.levels[0]).max()) == pytest.approx(float(np.max(bright.data)))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="full_scale"):
            build_bank([(dim, lm)], dtype="uint8", max_crop=5, full_scale=bad)
    # the data section carries it for every bank of a run
    cfg = DataConfig.from_mapping({"source": "phantom", "intensity_ceiling": 1.2})
    assert cfg.intensity_ceiling == 1.2 and cfg.to_mapping()["intensity_ceiling"] == 1.2
    assert DataConfig.from_mapping(cfg.to_mapping()) == cfg and DataConfig().intensity_ceiling is None
    with pytest.raises(ConfigError, match="data.intensity_ceiling"):
        DataConfig.from_mapping({"source": "phantom", "intensity_ceiling": 0})
