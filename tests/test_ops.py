"""jaxmed.ops against plain NumPy / SciPy references (small arrays, few compilations)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from jaxmed import ops
from jaxmed.data import geometry

SHAPE = (11, 9, 7)  # unpadded test volume, anisotropic on purpose


def _padded(rng, margin, dtype=np.float32, n=None):
    """Random volume(s) of SHAPE padded with a sentinel value that never occurs inside."""
    lead = () if n is None else (n,)
    inner = rng.integers(1, 250, size=lead + SHAPE).astype(dtype)
    pad = [(0, 0)] * len(lead) + [(margin, margin)] * 3
    return np.pad(inner, pad, constant_values=0).astype(dtype), inner


def _centres(rng, k):
    """Corner, edge and random voxel centres of SHAPE, ``(k + 4, 3)`` int32."""
    hi = np.asarray(SHAPE) - 1
    fixed = np.array([[0, 0, 0], hi, [0, hi[1], 0], [hi[0], 0, hi[2]]])
    rand = rng.integers(0, hi + 1, size=(k, 3))
    return np.concatenate([fixed, rand]).astype(np.int32)


def _np_crop(padded, c, size, margin, stride=(1, 1, 1)):
    lo = [c[i] + margin - size[i] // 2 * stride[i] for i in range(3)]
    assert min(lo) >= 0  # the reference itself must not clamp
    return padded[tuple(slice(lo[i], lo[i] + (size[i] - 1) * stride[i] + 1, stride[i]) for i in range(3))]


# ---------------------------------------------------------------- crop


@pytest.mark.parametrize("size", [(5, 5, 5), (4, 6, 3)])
def test_crop_matches_numpy_slicing_at_borders(size):
    rng = np.random.default_rng(0)
    m = ops.required_margin(size)
    assert m == max(size) // 2 + 1
    padded, inner = _padded(rng, m)
    centres = _centres(rng, 12)
    f = jax.jit(jax.vmap(ops.crop, in_axes=(None, 0, None, None)), static_argnums=(2, 3))
    out = np.asarray(f(padded, centres, size, m))
    assert out.shape == (len(centres),) + size and out.dtype == np.float32
    for c, o in zip(centres, out):
        np.testing.assert_array_equal(o, _np_crop(padded, c, size, m))
        # the window's [D // 2] voxel is the requested centre (no clamping shift at the border)
        assert o[size[0] // 2, size[1] // 2, size[2] // 2] == inner[tuple(c)]
    # at the corner (0, 0, 0) the voxels before the centre are padding, not shifted image
    first = out[0]
    assert np.all(first[: size[0] // 2] == 0)


def test_crop_margin_too_small_raises_and_bad_size():
    vol = jnp.zeros((20, 20, 20))
    with pytest.raises(ValueError, match="margin"):
        ops.crop(vol, jnp.zeros(3, jnp.int32), 9, 4)  # needs 5
    with pytest.raises(ValueError):
        ops.crop(vol, jnp.zeros(3, jnp.int32), (3, 3), 5)
    assert ops.required_margin(9, stride=2) == 9
    assert ops.required_margin((4, 6, 3), stride=(1, 1, 3)) == 4


@pytest.mark.parametrize("dtype", [np.uint8, jnp.bfloat16, np.float32])
def test_crop_from_stack_vmapped_preserves_dtype(dtype):
    rng = np.random.default_rng(1)
    size, m = (4, 6, 3), 4
    stack, _ = _padded(rng, m, dtype=dtype, n=3)
    centres = _centres(rng, 60)
    index = rng.integers(0, 3, size=len(centres)).astype(np.int32)
    f = jax.jit(jax.vmap(functools.partial(ops.crop_from_stack, size=size, margin=m), in_axes=(None, 0, 0)))
    out = f(jnp.asarray(stack), index, centres)
    assert out.dtype == jnp.dtype(dtype) and out.shape == (len(centres),) + size
    out = np.asarray(out)
    for i, c, o in zip(index, centres, out):
        np.testing.assert_array_equal(o, _np_crop(stack[i], c, size, m))


@pytest.mark.parametrize("dtype", [np.uint8, jnp.bfloat16, np.float32])
def test_crop_batch_matches_numpy_slicing_any_batch_shape(dtype):
    """crop_batch = vmap(crop_from_stack) over any batch shape: windows at corners, edges and inside,
    the index broadcast (a scalar for one volume), dtype kept (bfloat16 moved as bits)."""
    from jaxmed.ops.crop import crop_batch

    rng = np.random.default_rng(5)
    size, m = (5, 4, 3), 3
    stack, _ = _padded(rng, m, dtype=dtype, n=3)
    centres = _centres(rng, 8).reshape(3, 4, 3)
    index = rng.integers(0, 3, size=(3, 4)).astype(np.int32)
    f = jax.jit(crop_batch, static_argnums=(3, 4))
    out = f(jnp.asarray(stack), index, centres, size, m)
    assert out.dtype == jnp.dtype(dtype) and out.shape == (3, 4) + size
    one = np.asarray(f(jnp.asarray(stack), 2, centres, size, m))
    for ij in np.ndindex(3, 4):
        np.testing.assert_array_equal(np.asarray(out[ij]), _np_crop(stack[index[ij]], centres[ij], size, m))
        np.testing.assert_array_equal(one[ij], _np_crop(stack[2], centres[ij], size, m))


def _pyramid(rng, margin, dtype, n=2):
    """Three padded levels of different, anisotropic shapes (sentinel-free random contents)."""
    inner = [(11, 9, 7), (6, 5, 4), (3, 3, 2)]
    levels = [np.pad(rng.integers(1, 250, size=(n,) + sh), [(0, 0)] + [(margin, margin)] * 3).astype(dtype) for sh in inner]
    return levels, inner


@pytest.mark.parametrize("dtype", [np.uint8, jnp.bfloat16, np.float32])
def test_crop_packed_matches_numpy_slicing_at_every_level(dtype):
    """Each window cropped from its own level of the packed pyramid equals NumPy slicing of that
    level, for windows touching every border of every level, in every dtype."""
    from jaxmed.ops.crop import crop_packed, pack_levels, packed_layout

    rng = np.random.default_rng(6)
    size, m = (5, 3, 4), 3
    levels, inner = _pyramid(rng, m, dtype)
    packed = pack_levels(levels)
    shapes = tuple(a.shape[1:] for a in levels)
    layout = packed_layout(shapes)
    assert packed.shape == (2, sum(int(np.prod(s)) for s in shapes)) and packed.dtype == np.dtype(dtype)
    assert [o for o, *_ in layout] == [0, int(np.prod(shapes[0])), int(np.prod(shapes[0])) + int(np.prod(shapes[1]))]
    lv, vol, cen = [], [], []
    for level, sh in enumerate(inner):
        hi = np.asarray(sh) - 1
        corners = np.array([[0, 0, 0], hi, [0, hi[1], 0], [hi[0], 0, hi[2]]])
        rand = rng.integers(0, hi + 1, size=(6, 3))
        for c in np.concatenate([corners, rand]):
            lv.append(level), vol.append(rng.integers(0, 2)), cen.append(c)
    lv, vol, cen = (np.asarray(a, np.int32) for a in (lv, vol, cen))
    order = rng.permutation(len(lv))  # levels interleaved in the batch
    lv, vol, cen = lv[order].reshape(5, 6), vol[order].reshape(5, 6), cen[order].reshape(5, 6, 3)
    f = jax.jit(crop_packed, static_argnums=(1, 5, 6))
    out = f(jnp.asarray(packed), shapes, lv, vol, cen, size, m)
    assert out.dtype == jnp.dtype(dtype) and out.shape == (5, 6) + size
    out = np.asarray(out)
    for ij in np.ndindex(5, 6):
        want = _np_crop(levels[lv[ij]][vol[ij]], cen[ij], size, m)
        np.testing.assert_array_equal(out[ij], want)
        assert out[ij][size[0] // 2, size[1] // 2, size[2] // 2] == levels[lv[ij]][vol[ij]][tuple(cen[ij] + m)]


def test_crop_packed_equals_dynamic_slice_for_any_input():
    """Out-of-grid centres and out-of-range volume indices give exactly what ``lax.dynamic_slice``
    gives on that level (wrap negatives, clamp): the row gather never reads out of bounds."""
    from jaxmed.ops.crop import crop_batch, crop_packed, pack_levels

    rng = np.random.default_rng(7)
    size, m = (5, 5, 5), 3
    levels, _ = _pyramid(rng, m, np.float32)
    shapes = tuple(a.shape[1:] for a in levels)
    cen = rng.integers(-9, 20, size=(40, 3)).astype(np.int32)
    vol = rng.integers(-3, 5, size=40).astype(np.int32)
    lv = rng.integers(0, 3, size=40).astype(np.int32)
    got = np.asarray(jax.jit(crop_packed, static_argnums=(1, 5, 6))(jnp.asarray(pack_levels(levels)), shapes, lv, vol, cen, size, m))
    per_level = [np.asarray(jax.jit(crop_batch, static_argnums=(3, 4))(jnp.asarray(a), vol, cen, size, m)) for a in levels]
    np.testing.assert_array_equal(got, np.choose(lv[:, None, None, None], per_level))


def test_crop_packed_bad_input():
    from jaxmed.ops.crop import crop_packed, pack_levels, packed_layout

    levels, _ = _pyramid(np.random.default_rng(0), 3, np.float32)
    shapes = tuple(a.shape[1:] for a in levels)
    packed = jnp.asarray(pack_levels(levels))
    with pytest.raises(ValueError, match="does not match"):
        crop_packed(packed[:, :-1], shapes, 0, 0, jnp.zeros(3, jnp.int32), 5, 3)
    with pytest.raises(ValueError, match="margin"):
        crop_packed(packed, shapes, 0, 0, jnp.zeros(3, jnp.int32), 9, 3)
    with pytest.raises(ValueError, match="int32"):
        packed_layout([(1300, 1300, 1300)])


def test_strided_crop_matches_numpy():
    rng = np.random.default_rng(2)
    size, stride = (3, 4, 3), (2, 1, 3)
    m = ops.required_margin(size, stride)
    stack, inner = _padded(rng, m, n=2)
    centres = _centres(rng, 6)
    index = np.arange(len(centres), dtype=np.int32) % 2
    f = jax.jit(jax.vmap(lambda s, i, c: (ops.strided_crop(s[1], c, size, stride, m),
                                          ops.strided_crop_from_stack(s, i, c, size, stride, m)),
                         in_axes=(None, 0, 0)))
    single, from_stack = map(np.asarray, f(stack, index, centres))
    for i, c, a, b in zip(index, centres, single, from_stack):
        np.testing.assert_array_equal(a, _np_crop(stack[1], c, size, m, stride))
        np.testing.assert_array_equal(b, _np_crop(stack[i], c, size, m, stride))
        assert b[1, 2, 1] == inner[i][tuple(c)]


# ---------------------------------------------------------------- trilinear / resample


def _points_with_edges(rng, shape, k):
    """Random points in and around the grid plus exact-border and just-outside points, float32."""
    n = np.asarray(shape, np.float64)
    pts = rng.uniform(-1.5, n + 0.5, size=(k, 3))
    inside = rng.uniform(0, n - 1, size=(k, 3))
    edge = inside.copy()
    edge[:, 0] = 0.0
    edge[k // 2 :, 1] = n[1] - 1  # exactly on the far face
    outside = inside[:8].copy()
    outside[:4, 2] = -1e-3
    outside[4:, 0] = n[0] - 1 + 1e-3
    return np.concatenate([pts, inside, edge, outside]).astype(np.float32)


def _scipy_sample(vol, pts, fill):
    return map_coordinates(np.asarray(vol, np.float64), np.moveaxis(pts.astype(np.float64), -1, 0), order=1, mode="constant", cval=fill)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, jnp.bfloat16])
def test_trilinear_matches_map_coordinates(dtype):
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 200, size=SHAPE).astype(dtype)
    pts = _points_with_edges(rng, SHAPE, 200).reshape(-1, 4, 3)  # batch dims (..., 3)
    out = jax.jit(ops.trilinear)(jnp.asarray(vol), pts, -5.0)
    assert out.dtype == jnp.float32 and out.shape == pts.shape[:-1]
    ref = _scipy_sample(vol.astype(np.float32), pts, -5.0)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=2e-4)
    assert np.sum(ref == -5.0) > 50 and np.sum(ref != -5.0) > 200  # both branches exercised
    # at integer points the input value comes back exactly
    ij = rng.integers(0, np.asarray(SHAPE), size=(20, 3))
    np.testing.assert_array_equal(np.asarray(ops.trilinear(vol, ij.astype(np.float32))), vol[tuple(ij.T)].astype(np.float32))


def test_trilinear_from_stack_ignores_padding_and_vmaps():
    rng = np.random.default_rng(4)
    m = 3
    inner = rng.normal(size=(2,) + SHAPE).astype(np.float32)
    stack = np.pad(inner, [(0, 0)] + [(m, m)] * 3, constant_values=1e3)  # loud padding
    pts = _points_with_edges(rng, SHAPE, 50)
    batch = np.stack([pts, pts[::-1]])
    out = jax.jit(jax.vmap(ops.trilinear_from_stack, in_axes=(None, 0, 0, None, None)), static_argnums=4)(
        stack, jnp.array([0, 1]), batch, 0.5, m
    )
    for i in range(2):
        np.testing.assert_allclose(np.asarray(out[i]), _scipy_sample(inner[i], batch[i], 0.5), rtol=1e-5, atol=1e-5)


def _random_affine(rng, centre_out, centre_in, scale=1.0):
    r = Rotation.from_euler("xyz", rng.uniform(-40, 40, 3), degrees=True).as_matrix() * scale
    a = np.eye(4)
    a[:3, :3] = r
    a[:3, 3] = np.asarray(centre_in) - r @ np.asarray(centre_out)
    return a


def test_resample_window_matches_map_coordinates_incl_outside():
    rng = np.random.default_rng(5)
    vol = rng.normal(size=SHAPE).astype(np.float32)
    size = (6, 5, 4)
    centre_out = (np.asarray(size) - 1) / 2
    # three windows: centred inside, half outside, and a (3, 4) affine with anisotropic scale
    affs = [_random_affine(rng, centre_out, [5.0, 4.0, 3.0]), _random_affine(rng, centre_out, [10.0, 1.0, 6.0], 1.3)]
    affs.append(np.diag([0.7, 1.2, 0.9, 1.0]) @ affs[0])
    f = jax.jit(ops.resample_window, static_argnums=2)
    for k, a in enumerate(affs):
        a_in = a[:3] if k == 2 else a
        out = np.asarray(f(vol, a_in.astype(np.float32), size, -1.0))
        o = np.stack(np.meshgrid(*(np.arange(s) for s in size), indexing="ij"), axis=-1)
        pts = (o @ a[:3, :3].T + a[:3, 3]).astype(np.float32)
        ref = _scipy_sample(vol, pts, -1.0)
        # near the border float32 vs float64 coordinates may flip inside/outside; compare the rest
        n = np.asarray(SHAPE) - 1
        clear = np.all((np.abs(pts) > 1e-4) & (np.abs(pts - n) > 1e-4), axis=-1)
        assert out.shape == size and out.dtype == np.float32
        np.testing.assert_allclose(out[clear], ref[clear], rtol=1e-4, atol=1e-4)
        if k == 1:  # the half-outside window really has filled voxels
            assert np.sum(ref[clear] == -1.0) > 10 and np.sum(ref[clear] != -1.0) > 10


def test_resample_window_from_stack_and_box_affine():
    m = 2
    # intensity = linear ramp, so box contents are known in closed form
    g = np.stack(np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij"), -1).astype(np.float32)
    ramp = g @ np.array([1.0, 10.0, 100.0], np.float32)
    stack = np.pad(np.stack([ramp, -ramp]), [(0, 0)] + [(m, m)] * 3, constant_values=7.0)
    lo, hi = np.array([1.5, 2.0, 0.25], np.float32), np.array([8.0, 6.5, 5.0], np.float32)
    size = (4, 3, 1)
    a = ops.box_to_grid_affine(lo, hi, size)
    assert a.shape == (4, 4) and a.dtype == jnp.float32
    corner = np.asarray(a) @ np.array([3, 2, 0, 1.0])
    np.testing.assert_allclose(corner[:2], hi[:2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(a)[2, 3], 0.5 * (lo[2] + hi[2]))  # single-voxel axis: mid-point
    out = jax.jit(ops.resample_window_from_stack, static_argnums=(3, 5))(stack, 1, a, size, 0.0, m)
    axes = [np.linspace(lo[0], hi[0], 4), np.linspace(lo[1], hi[1], 3), [0.5 * (lo[2] + hi[2])]]
    exp = -np.stack(np.meshgrid(*axes, indexing="ij"), -1) @ np.array([1.0, 10.0, 100.0])
    np.testing.assert_allclose(np.asarray(out), exp, rtol=1e-5)


# ---------------------------------------------------------------- rigid


def test_rigid_matrix_matches_numpy_and_scipy():
    rng = np.random.default_rng(7)
    params = np.concatenate([rng.uniform(-20, 20, (16, 3)), rng.uniform(-180, 180, (16, 3))], axis=1)
    centre = np.array([40.0, -12.0, 7.5])
    mats = np.asarray(jax.jit(jax.vmap(ops.rigid_matrix, in_axes=(0, None)))(params, centre))
    assert mats.shape == (16, 4, 4) and mats.dtype == np.float32
    x = rng.normal(size=(5, 3)) * 30
    for p, mat in zip(params, mats):
        r = geometry.rotation_matrix(p[3:])
        np.testing.assert_allclose(r, Rotation.from_euler("xyz", p[3:], degrees=True).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(mat[:3, :3], r, atol=2e-6)
        np.testing.assert_array_equal(mat[3], [0, 0, 0, 1])
        expected = (x - centre) @ r.T + centre + p[:3]
        np.testing.assert_allclose(x @ mat[:3, :3].T + mat[:3, 3], expected, atol=1e-4)


def test_compose_invert_and_params_round_trip():
    rng = np.random.default_rng(8)
    pa, pb = np.array([1.0, -2.0, 3.0, 10.0, 20.0, -30.0]), np.array([-4.0, 0.5, 2.0, -5.0, 60.0, 100.0])
    c = np.array([3.0, 4.0, 5.0])
    a, b = ops.rigid_matrix(pa, c), ops.rigid_matrix(pb, c)
    x = np.append(rng.normal(size=3), 1.0)
    np.testing.assert_allclose(ops.compose(a, b) @ x, a @ (b @ x), atol=1e-5)
    np.testing.assert_allclose(ops.compose(a, ops.invert_rigid(a), b), b, atol=1e-5)
    np.testing.assert_allclose(ops.invert_rigid(a) @ a, np.eye(4), atol=1e-5)
    for p in (pa, pb, np.array([0.0, 1.0, 2.0, 170.0, -89.0, -179.0])):
        np.testing.assert_allclose(ops.matrix_to_params(ops.rigid_matrix(p, c), c), p, atol=2e-3)
    for ry in (90.0, -90.0):  # gimbal lock: angles differ but the matrix must round-trip
        m = ops.rigid_matrix(np.array([1.0, 2.0, 3.0, 30.0, ry, 50.0]), c)
        np.testing.assert_allclose(ops.rigid_matrix(ops.matrix_to_params(m, c), c), m, atol=1e-4)


def test_rigid_distance_matches_scipy_and_small_angles():
    rng = np.random.default_rng(9)
    pa = np.concatenate([rng.uniform(-10, 10, (8, 3)), rng.uniform(-120, 120, (8, 3))], axis=1)
    pb = np.concatenate([rng.uniform(-10, 10, (8, 3)), rng.uniform(-120, 120, (8, 3))], axis=1)
    pb[0] = pa[0] + np.array([0, 0, 0, 0.01, 0.0, 0.0])  # 0.01 degree apart: arccos would fail here
    pb[1] = pa[1]
    t, ang = jax.jit(jax.vmap(ops.rigid_distance))(pa, pb)
    ra = Rotation.from_euler("xyz", pa[:, 3:], degrees=True)
    rb = Rotation.from_euler("xyz", pb[:, 3:], degrees=True)
    np.testing.assert_allclose(np.asarray(ang), np.rad2deg((ra.inv() * rb).magnitude()), atol=2e-3)
    np.testing.assert_allclose(np.asarray(t), np.linalg.norm(pa[:, :3] - pb[:, :3], axis=1), rtol=1e-6)
    assert abs(float(ang[0]) - 0.01) < 1e-4 and float(ang[1]) < 1e-3


# ---------------------------------------------------------------- planes


def test_plane_axes_orthonormal_for_any_normal():
    rng = np.random.default_rng(10)
    normals = np.concatenate([np.eye(3), -np.eye(3), [[1, 1, 1], [1e-7, 0, 1], [0.6, -0.8, 1e-9]], rng.normal(size=(20, 3))])
    u, v = jax.vmap(ops.plane_axes)(normals)
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    basis = np.stack([np.asarray(u), np.asarray(v), n], axis=1)  # (k, 3, 3) rows u, v, n
    np.testing.assert_allclose(basis @ basis.transpose(0, 2, 1), np.broadcast_to(np.eye(3), basis.shape), atol=1e-6)
    np.testing.assert_allclose(np.cross(u, v), n, atol=1e-6)  # right-handed


def test_sample_plane_reproduces_linear_intensity_exactly():
    shape = (20, 18, 22)
    coef, b = np.array([0.5, -1.25, 2.0]), 3.0
    g = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1)
    vol = (g @ coef + b).astype(np.float32)
    centre, normal = np.array([9.3, 8.6, 10.9]), np.array([0.3, -0.5, 0.8])
    kw = dict(size=(5, 7), n_slices=3, spacing=1.5, slice_spacing=2.0)
    out = jax.jit(functools.partial(ops.sample_plane, **kw))(vol, centre, normal)
    assert out.shape == (3, 5, 7) and out.dtype == jnp.float32
    u, v = (np.asarray(a, np.float64) for a in ops.plane_axes(normal))
    n = normal / np.linalg.norm(normal)
    s, h, w = np.meshgrid(np.arange(3) - 1.0, np.arange(5) - 2.0, np.arange(7) - 3.0, indexing="ij")
    pts = centre + (2.0 * s)[..., None] * n + (1.5 * h)[..., None] * u + (1.5 * w)[..., None] * v
    np.testing.assert_allclose(np.asarray(out), pts @ coef + b, atol=1e-4)
    np.testing.assert_allclose(float(out[1, 2, 3]), centre @ coef + b, atol=1e-4)  # middle sample = centre
    # the stack version on a padded bank gives the same slab
    m = 2
    stack = np.pad(vol[None], [(0, 0)] + [(m, m)] * 3, constant_values=-99.0)
    out2 = ops.sample_plane_from_stack(stack, 0, centre, normal, margin=m, **kw)
    np.testing.assert_allclose(np.asarray(out2), np.asarray(out), atol=1e-4)


def test_sample_plane_through_blob_shows_it_at_centre():
    shape = (24, 24, 24)
    blob = np.array([12.4, 10.0, 9.3])
    g = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), -1)
    vol = np.exp(-np.sum((g - blob) ** 2, -1) / (2 * 2.0**2)).astype(np.float32)
    rng = np.random.default_rng(11)
    normals = rng.normal(size=(4, 3))
    f = jax.jit(jax.vmap(functools.partial(ops.sample_plane, size=(15, 15), n_slices=5, slice_spacing=2.0), in_axes=(None, None, 0)))
    slabs = np.asarray(f(vol, blob, normals))
    for slab in slabs:
        mid = slab[2]
        assert np.unravel_index(np.argmax(mid), mid.shape) == (7, 7)
        assert mid[7, 7] > 0.9  # trilinear interpolation of an off-grid peak
        assert np.all(slab[[0, 1, 3, 4], 7, 7] < mid[7, 7])
        np.testing.assert_allclose(slab[1], slab[3], atol=0.02)  # symmetric around the centre


def test_plane_from_points_and_distance_angle():
    n_true = np.array([2.0, -1.0, 2.0]) / 3.0
    d_true = 4.0
    u, v = (np.asarray(a) for a in ops.plane_axes(n_true))
    p0 = d_true * n_true
    n, d = ops.plane_from_points(p0, p0 + 3 * u, p0 + 2 * v)
    np.testing.assert_allclose(np.asarray(n), n_true, atol=1e-6)  # (u x v = n) orientation
    np.testing.assert_allclose(float(d), d_true, atol=1e-5)
    ang, dist = ops.plane_distance_angle(n, d, -n, -d)  # same plane, flipped sign
    assert float(ang) < 1e-4 and float(dist) < 1e-5
    # a plane tilted by 30 degrees about u, and shifted: angle 30, offset difference 1.5
    rot = Rotation.from_rotvec(np.deg2rad(30) * u).as_matrix()
    n2 = rot @ n_true
    ang, dist = jax.jit(ops.plane_distance_angle)(n_true, d_true, -n2, -(d_true + 1.5))
    np.testing.assert_allclose([float(ang), float(dist)], [30.0, 1.5], atol=1e-4)
    ang, _ = ops.plane_distance_angle(n_true, 0.0, n_true + 1e-3 * u, 0.0)  # small angles stay accurate
    np.testing.assert_allclose(float(ang), np.rad2deg(np.arctan(1e-3)), rtol=1e-3)


# ---------------------------------------------------------------- IoU


def _brute_iou(a0, a1, b0, b1, size=12):
    """Integer boxes: count unit cells [i, i+1) covered by each box."""
    cells = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), -1) + 0.5
    ina = np.all((cells > a0) & (cells < a1), -1)
    inb = np.all((cells > b0) & (cells < b1), -1)
    union = np.sum(ina | inb)
    return np.sum(ina & inb) / union if union else 0.0


def test_box_iou_against_voxel_counting():
    rng = np.random.default_rng(12)
    k = 60
    a0 = rng.integers(0, 8, (k, 3))
    a1 = a0 + rng.integers(0, 5, (k, 3))
    b0 = rng.integers(0, 8, (k, 3))
    b1 = b0 + rng.integers(0, 5, (k, 3))
    # identical, nested, touching, disjoint, empty, both empty, inverted
    special = [
        ([1, 1, 1], [4, 4, 4], [1, 1, 1], [4, 4, 4]),
        ([0, 0, 0], [6, 6, 6], [2, 2, 2], [3, 3, 3]),
        ([0, 0, 0], [3, 3, 3], [3, 0, 0], [5, 3, 3]),
        ([0, 0, 0], [2, 2, 2], [5, 5, 5], [7, 7, 7]),
        ([1, 1, 1], [1, 4, 4], [0, 0, 0], [5, 5, 5]),
        ([2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]),
        ([4, 4, 4], [1, 1, 1], [0, 0, 0], [5, 5, 5]),
    ]
    sa0, sa1, sb0, sb1 = (np.array(x) for x in zip(*special))
    a0, a1, b0, b1 = (np.concatenate([x, y]) for x, y in zip((a0, a1, b0, b1), (sa0, sa1, sb0, sb1)))
    iou = np.asarray(jax.jit(ops.box_iou)(a0, a1, b0, b1))
    ref = np.array([_brute_iou(*x) for x in zip(a0, a1, b0, b1)])
    np.testing.assert_allclose(iou, ref, atol=1e-6)
    assert np.all(np.isfinite(iou)) and np.allclose(iou[-7:], [1.0, 1 / 216, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(ops.box_volume(a0, a1), np.prod(np.maximum(a1 - a0, 0), -1))


def test_box_iou_broadcasts_over_float_boxes():
    rng = np.random.default_rng(13)
    a0 = rng.uniform(0, 5, (4, 1, 3))
    a1 = a0 + rng.uniform(0.1, 4, (4, 1, 3))
    b0 = rng.uniform(0, 5, (1, 5, 3))
    b1 = b0 + rng.uniform(0.1, 4, (1, 5, 3))
    iou = np.asarray(ops.box_iou(a0, a1, b0, b1))
    assert iou.shape == (4, 5)
    inter = np.prod(np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None), -1)
    ref = inter / (np.prod(a1 - a0, -1) + np.prod(b1 - b0, -1) - inter)
    np.testing.assert_allclose(iou, ref, rtol=1e-5)


# ---------------------------------------------------------------- compiled-code regression


def test_bfloat16_bank_is_not_converted_or_copied_inside_loops():
    """XLA:CPU converts a whole bfloat16 source to float32 before a loop that slices it, and hoists
    a bitcast of it as a full copy; the ops slice uint16 bits behind an optimization barrier.
    Check the compiled program's top level builds no bank-sized f32 or u16 array."""
    stack = jnp.zeros((2, 30, 31, 32), jnp.bfloat16)

    def rollout(s, idx, centres):
        def body(r, acc):
            c = ops.crop_from_stack(s, idx, centres[r], 5, 3)
            v = ops.trilinear_from_stack(s, idx, centres[r].astype(jnp.float32), margin=3)
            return acc + c.astype(jnp.float32).sum() + v
        return jax.lax.fori_loop(0, centres.shape[0], body, jnp.float32(0))

    hlo = jax.jit(rollout).lower(stack, 1, jnp.full((4, 3), 5, jnp.int32)).compile().as_text()
    entry = hlo[hlo.index("\nENTRY") :]
    assert "f32[2,30,31,32]" not in entry and "u16[2,30,31,32]" not in entry
    # the same for the packed pyramid (one (N, V) row per volume) and its row gather
    from jaxmed.ops.crop import crop_packed, pack_levels

    levels = (stack, jnp.zeros((2, 20, 21, 22), jnp.bfloat16))
    shapes = tuple(a.shape[1:] for a in levels)

    def rollout_packed(p, idx, centres):
        def body(r, acc):
            c = crop_packed(p, shapes, r % 2, idx, centres[r], 5, 3)
            return acc + c.astype(jnp.float32).sum()
        return jax.lax.fori_loop(0, centres.shape[0], body, jnp.float32(0))

    packed = pack_levels(levels)
    n_v = packed.shape[1]
    hlo = jax.jit(rollout_packed).lower(packed, 1, jnp.full((4, 3), 5, jnp.int32)).compile().as_text()
    entry = hlo[hlo.index("\nENTRY") :]
    assert f"f32[2,{n_v}]" not in entry and f"u16[2,{n_v}]" not in entry
    bright = pack_levels((stack.at[1, 8, 8, 8].set(2.0), levels[1]))
    assert float(jax.jit(rollout_packed)(bright, 1, jnp.full((4, 3), 5, jnp.int32))) == 4.0  # level 0 at r = 0, 2
    # 4 iterations x (crop sum 2 + sample 2) of the one bright voxel (unpadded (5, 5, 5))
    assert float(jax.jit(rollout)(stack.at[1, 8, 8, 8].set(2.0), 1, jnp.full((4, 3), 5, jnp.int32))) == 16.0
