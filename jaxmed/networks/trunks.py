"""Feature trunks: stacked frames ``(..., k, X, Y, Z)`` -> flat features ``(..., F)``.

Every trunk here

* takes the ``k`` history frames as input channels, channels-first as environments emit them, with
  any number of batch dimensions in front (agents, environments, time...);
* accepts any input dtype: integer frames (uint8 banks) are cast to the compute dtype and scaled by
  ``1/255`` so that they lie in ``[0, 1]``; float frames (float32 / bfloat16) are only cast, not
  rescaled (the environment has already normalised them);
* computes in ``dtype`` (``float32`` or ``bfloat16``) with ``float32`` parameters and returns
  features in ``dtype``;
* checks its spatial input size at trace time (shapes are static) and raises
  :class:`jaxmed.errors.ConfigError` when it cannot process it; :meth:`check_input` runs the same
  check before anything is traced.

Trunks (selected by name through :data:`TRUNKS` / :func:`trunk_class`):

``"network3d"`` :class:`Network3DTrunk`
    The published Alansary et al. 2019 / Ghesu et al. network (``rl-medical``): conv 32·5³ (pad 1)
    → maxpool 2 → conv 32·5³ (pad 1) → maxpool 2 → conv 64·4³ (pad 1) → maxpool 2 → conv 64·3³
    (pad 0), each followed by a PReLU (one slope per layer, as ``torch.nn.PReLU()``), flattened.
    45³ input → 2³ × 64 = 512 features; with :class:`~jaxmed.networks.heads.QHead` (256-128-6)
    and k = 4 frames it has 550,860 parameters. ≈ 6 GFLOP per observation: the GPU configuration.
``"strided"`` :class:`StridedTrunk`
    Strided 3D convs 16·5³/2, 32·3³/2, 32·3³/2, 64·3³/2 (SAME padding, ReLU): ≈ 0.3 GFLOP at 45³.
``"patch"`` :class:`PatchTrunk`
    Patch embedding: non-overlapping ``p³`` patches (default p = 5) → Dense(64) → activation, then
    ``g³`` neighbouring patch tokens (default g = 3) → Dense(128) → activation, flattened. Only
    reshapes and matmuls, ≈ 0.06 GFLOP at 45³: fast on CPU. Needs every spatial size divisible by
    ``p · g`` (45 = 5 · 3 · 3 → 3³ × 128 = 3456 features). ``p`` and ``g`` may be given per axis, so
    non-cubic inputs such as a 3 × 64 × 64 slab of slices work (``p = (3, 8, 8)``, ``g = (1, 2, 2)``).

``width`` multiplies every channel count (rounded, at least 1).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmed.errors import ConfigError

Dtype = Any

#: PReLU initial slope, as ``torch.nn.PReLU`` (the published networks are PyTorch / TF).
PRELU_INIT = 0.25


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to an int, at least 1."""
    return max(1, int(round(channels * width)))


def prepare_frames(frames: jnp.ndarray, dtype: Dtype) -> tuple[jnp.ndarray, tuple[int, ...]]:
    """Cast and lay out stacked frames for a 3D trunk.

    Args:
      frames: ``(..., k, X, Y, Z)``, any dtype. Integer frames are scaled by ``1/255``.
      dtype: compute dtype.

    Returns:
      ``(x, batch_shape)``: ``x`` is ``(B, X, Y, Z, k)`` channels-last in ``dtype`` with all batch
      dims flattened into ``B``; ``batch_shape`` is the original ``...``.
    """
    if frames.ndim < 4:
        raise ConfigError(f"trunk input must be (..., k, X, Y, Z) frames, got shape {frames.shape}")
    batch_shape = frames.shape[:-4]
    x = frames.reshape((-1,) + frames.shape[-4:])
    if jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(dtype) * jnp.asarray(1.0 / 255.0, dtype)
    else:
        x = x.astype(dtype)
    return jnp.moveaxis(x, 1, -1), batch_shape


def _spatial3(spatial: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(spatial, int):
        return (spatial,) * 3
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) != 3:
        raise ConfigError(f"crop size must be an int or three ints, got {spatial}")
    return spatial  # type: ignore[return-value]


class _Trunk(nn.Module):
    """Shared plumbing: input checks, casting, batch flattening. Subclasses define :meth:`body`."""

    width: float = 1.0
    dtype: Dtype = jnp.float32

    def check_input(self, spatial: int | Sequence[int]) -> None:
        """Raise :class:`ConfigError` if crops of ``spatial`` (D or (X, Y, Z)) cannot be processed."""
        if not self.width > 0:
            raise ConfigError(f"{type(self).__name__}: width must be > 0, got {self.width}")

    def body(self, x: jnp.ndarray) -> jnp.ndarray:
        """``(B, X, Y, Z, k)`` in the compute dtype -> ``(B, F)``.

        Called from the compact ``__call__``, so it may create submodules inline.
        """
        raise NotImplementedError

    @nn.compact
    def __call__(self, frames: jnp.ndarray) -> jnp.ndarray:
        """``(..., k, X, Y, Z)`` any dtype -> ``(..., F)`` in ``dtype``."""
        self.check_input(frames.shape[-3:])
        x, batch_shape = prepare_frames(frames, self.dtype)
        features = self.body(x)
        return features.reshape(batch_shape + features.shape[-1:])


# (features, kernel, padding) of the published network; a 2³ max-pool follows all but the last.
_NETWORK3D_LAYERS = ((32, 5, 1), (32, 5, 1), (64, 4, 1), (64, 3, 0))


def network3d_output_size(spatial: int) -> int:
    """Spatial size after the Network3D trunk for an input of size ``spatial`` (<= 0: too small)."""
    n = spatial
    for i, (_, kernel, pad) in enumerate(_NETWORK3D_LAYERS):
        n = n + 2 * pad - kernel + 1
        if i < len(_NETWORK3D_LAYERS) - 1:
            n //= 2
        if n < 1:
            return 0
    return n


class Network3DTrunk(_Trunk):
    """The published Network3D conv trunk (see module docstring). Needs crops of at least 34³."""

    def check_input(self, spatial):
        super().check_input(spatial)
        for s in _spatial3(spatial):
            if network3d_output_size(s) < 1:
                raise ConfigError(
                    f"network3d trunk: crop size {s} is too small (4 convs and 3 pools need >= 34 "
                    "voxels per axis); use a larger crop or the 'strided' / 'patch' trunk"
                )

    def body(self, x):
        for i, (features, kernel, pad) in enumerate(_NETWORK3D_LAYERS):
            x = nn.Conv(scaled(features, self.width), (kernel,) * 3, padding=[(pad, pad)] * 3,
                        dtype=self.dtype)(x)
            if i < len(_NETWORK3D_LAYERS) - 1:
                x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
            x = nn.PReLU(negative_slope_init=PRELU_INIT)(x)  # after the pool, as rl-medical
        return x.reshape(x.shape[0], -1)


class StridedTrunk(_Trunk):
    """Strided 3D convs 16·5³/2, 32·3³/2, 32·3³/2, 64·3³/2, SAME padding, ReLU.

    Output spatial size ``ceil(D / 16)`` per axis (45 -> 3, 16 -> 1); any ``D >= 1`` works.
    """

    def body(self, x):
        for features, kernel in ((16, 5), (32, 3), (32, 3), (64, 3)):
            x = nn.Conv(scaled(features, self.width), (kernel,) * 3, strides=2, padding="SAME",
                        dtype=self.dtype)(x)
            x = nn.relu(x)
        return x.reshape(x.shape[0], -1)


_ACTIVATIONS: dict[str, Callable] = {"relu": nn.relu, "gelu": nn.gelu}


def _blocks(x: jnp.ndarray, size: int | Sequence[int]) -> jnp.ndarray:
    """``(B, X, Y, Z, C)`` -> ``(B, X/sx, Y/sy, Z/sz, sx·sy·sz·C)``: non-overlapping blocks as tokens
    (``size`` an int for cubes, or ``(sx, sy, sz)``)."""
    sx, sy, sz = _spatial3(size)
    b, nx, ny, nz, c = x.shape
    x = x.reshape(b, nx // sx, sx, ny // sy, sy, nz // sz, sz, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, nx // sx, ny // sy, nz // sz, sx * sy * sz * c)


def _positive_ints(value, name: str) -> tuple[int, int, int]:
    """An int or three ints, each >= 1, as a 3-tuple (:class:`ConfigError` otherwise)."""
    items = (value,) * 3 if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        items = tuple(items)
    except TypeError:
        items = ()
    if len(items) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items):
        raise ConfigError(f"patch trunk: {name} must be a positive int or three positive ints, got {value!r}")
    return items  # type: ignore[return-value]


class PatchTrunk(_Trunk):
    """Patch embedding: ``p³`` patches -> Dense(embed) -> act; ``g³`` tokens -> Dense(hidden) -> act.

    Attributes:
      patch_size: ``p``, voxels per patch side (default 5), or ``(px, py, pz)`` per axis (e.g.
        ``(3, 8, 8)`` for a slab of 3 slices of 64 x 64 from the view-plane env).
      group: ``g``, patch tokens per group side (default 3), or ``(gx, gy, gz)``; 1 disables grouping.
      embed: patch embedding width (default 64, times ``width``).
      hidden: group embedding width (default 128, times ``width``).
      activation: ``"relu"`` or ``"gelu"``.

    Every spatial input size must be divisible by ``p · g`` on its axis. Output:
    ``prod(D_i / (p_i g_i)) · hidden`` features.
    """

    patch_size: int | tuple[int, int, int] = 5
    group: int | tuple[int, int, int] = 3
    embed: int = 64
    hidden: int = 128
    activation: str = "relu"

    def check_input(self, spatial):
        super().check_input(spatial)
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(f"patch trunk: unknown activation {self.activation!r}; "
                              f"choose one of {sorted(_ACTIVATIONS)}")
        for name in ("embed", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"patch trunk: {name} must be a positive int, got {value!r}")
        patch = _positive_ints(self.patch_size, "patch_size")
        group = _positive_ints(self.group, "group")
        for s, p, g in zip(_spatial3(spatial), patch, group):
            block = p * g
            if s % block:
                near = max(block, round(s / block) * block)
                raise ConfigError(
                    f"patch trunk: crop size {s} is not divisible by patch_size * group = "
                    f"{p} * {g} = {block}; use a crop size such as {near}, "
                    "or change patch_size / group"
                )

    def body(self, x):
        act = _ACTIVATIONS[self.activation]
        x = act(nn.Dense(scaled(self.embed, self.width), dtype=self.dtype, name="patch_embed")(
            _blocks(x, _positive_ints(self.patch_size, "patch_size"))))
        x = act(nn.Dense(scaled(self.hidden, self.width), dtype=self.dtype, name="group_embed")(
            _blocks(x, _positive_ints(self.group, "group"))))
        return x.reshape(x.shape[0], -1)


#: Trunk classes by config name.
TRUNKS: dict[str, type[_Trunk]] = {
    "network3d": Network3DTrunk,
    "strided": StridedTrunk,
    "patch": PatchTrunk,
}

