"""Jitted, vmappable array kernels: crops, trilinear resampling, rigid transforms, planes, IoU, features.

Everything here is a pure JAX function on voxel coordinates (``(0, 0, 0)`` = centre of the first
voxel); nothing reads files or holds state.
"""

from jaxmed.ops.crop import (
    crop,
    crop_batch,
    crop_from_stack,
    crop_packed,
    pack_levels,
    packed_layout,
    required_margin,
    strided_crop,
    strided_crop_from_stack,
)
from jaxmed.ops.iou import box_iou, box_volume
from jaxmed.ops.linalg import apply_affine, matmul, matvec, vdot
from jaxmed.ops.plane import (
    plane_axes,
    plane_distance_angle,
    plane_from_points,
    plane_points,
    sample_plane,
    sample_plane_from_stack,
)
from jaxmed.ops.resample import (
    affine_grid,
    box_to_grid_affine,
    resample_window,
    resample_window_from_stack,
    trilinear,
    trilinear_from_stack,
)
from jaxmed.ops.rigid import (
    compose,
    invert_rigid,
    matrix_to_params,
    rigid_distance,
    rigid_matrix,
    rotation_angle,
    rotation_matrix,
)

__all__ = [
    "affine_grid",
    "apply_affine",
    "box_iou",
    "box_to_grid_affine",
    "box_volume",
    "compose",
    "crop",
    "crop_batch",
    "crop_from_stack",
    "crop_packed",
    "pack_levels",
    "packed_layout",
    "invert_rigid",
    "matmul",
    "matvec",
    "matrix_to_params",
    "plane_axes",
    "plane_distance_angle",
    "plane_from_points",
    "plane_points",
    "required_margin",
    "resample_window",
    "resample_window_from_stack",
    "rigid_distance",
    "rigid_matrix",
    "rotation_angle",
    "rotation_matrix",
    "sample_plane",
    "sample_plane_from_stack",
    "strided_crop",
    "strided_crop_from_stack",
    "trilinear",
    "trilinear_from_stack",
    "vdot",
]
