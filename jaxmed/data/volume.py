"""The in-memory image type: a 3D intensity array with its voxel->world affine."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxmed.data import geometry


@dataclasses.dataclass(frozen=True)
class Volume:
    """A 3D scalar image.

    Attributes:
      data: ``(X, Y, Z)`` float32 intensities. After :func:`jaxmed.data.load_image` the voxel axes
        point (approximately, for oblique scans exactly after resampling) to R, A, S.
      affine: ``(4, 4)`` float64, voxel index -> world RAS mm.
      source: where the image came from (a path or a description), used in error messages.
      normalisation: how intensities were normalised (method, percentiles, the raw values they
        mapped to), or ``None`` if they are raw.
    """

    data: np.ndarray
    affine: np.ndarray
    source: str = "<array>"
    normalisation: dict[str, Any] | None = None

    def __post_init__(self):
        object.__setattr__(self, "affine", geometry.check_affine(self.affine, self.source))
        if np.ndim(self.data) != 3:
            from jaxmed.errors import ImageError

            raise ImageError(f"{self.source}: a volume must be 3D, got shape {np.shape(self.data)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel edge lengths in mm, ``(3,)``."""
        return geometry.voxel_spacing(self.affine)

    def world_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """World RAS mm ``(..., 3)`` -> continuous voxel indices ``(..., 3)``."""
        return geometry.world_to_voxel(self.affine, points)

    def voxel_to_world(self, voxels: np.ndarray) -> np.ndarray:
        """Voxel indices ``(..., 3)`` -> world RAS mm ``(..., 3)``."""
        return geometry.voxel_to_world(self.affine, voxels)

    def contains(self, points: np.ndarray, margin_vox: float = 0.0) -> np.ndarray:
        """Whether world points ``(..., 3)`` lie inside the voxel grid (shrunk by ``margin_vox``)."""
        v = self.world_to_voxel(points)
        hi = np.asarray(self.shape) - 1 - margin_vox
        return np.all((v >= -0.5 + margin_vox) & (v <= hi + 0.5), axis=-1)

    def replace(self, **changes) -> "Volume":
        return dataclasses.replace(self, **changes)
