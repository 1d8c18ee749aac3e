"""Plain NumPy / SciPy references of the segmentation envs, for equivalence tests and speed baselines.

:class:`ReferenceThresholdSeg` and :class:`ReferenceVoxelSeg` implement the dynamics specified in
:mod:`jaxmed.envs.threshold_seg` and :mod:`jaxmed.envs.voxel_seg` the way a Python implementation
would: mutable attributes, ``scipy.ndimage`` morphology, explicit per-voxel patch slicing. One
environment each, no auto-reset (the caller resets when ``terminated or truncated``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_CUBE = ndimage.generate_binary_structure(3, 3)


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def _bce(prob: np.ndarray, label: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(prob.astype(np.float64), eps, 1 - eps)
    return -(label * np.log(p) + (1 - label) * np.log1p(-p))


class _BankArrays:
    def __init__(self, bank):
        self.images = np.asarray(bank.images)
        self.labels = np.asarray(bank.labels_mask) > 0
        self.atlas = np.asarray(bank.atlas) > 0
        self.scale = float(bank.intensity_scale)
        self.uint8 = self.images.dtype == np.uint8

    def intensity(self, v: int) -> np.ndarray:
        return self.images[v].astype(np.float32) * np.float32(self.scale)


class ReferenceThresholdSeg:
    """Sahba-style threshold window + opening (spec: :mod:`jaxmed.envs.threshold_seg`)."""

    def __init__(self, config, params, bank):
        self.c, self.p, self.b = config, params, _BankArrays(bank)

    def mask(self) -> np.ndarray:
        m = (self.image >= self.low) & (self.image <= self.high)
        if self.radius > 0:
            m = ndimage.binary_dilation(ndimage.binary_erosion(m, _CUBE, self.radius), _CUBE, self.radius)
        return m

    def obs(self) -> np.ndarray:
        on = 255 if self.b.uint8 else 1
        return np.stack([self.b.images[self.volume], (self.mask() * on).astype(self.b.images.dtype)])[None]

    def reset_at(self, volume: int, window, radius: int) -> np.ndarray:
        wmax = float(self.p.window_max)
        self.volume, self.image = int(volume), self.b.intensity(int(volume))
        self.low = float(np.clip(np.float32(window[0]), 0, wmax))
        self.high = float(np.clip(np.float32(window[1]), self.low, wmax))
        self.radius = int(np.clip(radius, 0, self.c.max_radius))
        self.t, self.done = 0, False
        self.dice = _dice(self.mask(), self.b.labels[self.volume])
        return self.obs()

    def step(self, action: int):
        a, d, wmax = int(action), float(np.float32(self.p.window_step)), float(self.p.window_max)
        stop = a == 8
        if not stop:
            low = self.low + {0: d, 1: -d, 4: d, 5: -d}.get(a, 0.0)
            high = self.high + {2: d, 3: -d, 4: d, 5: -d}.get(a, 0.0)
            self.low = float(np.clip(np.float32(low), 0, wmax))
            self.high = float(np.clip(np.float32(high), self.low, wmax))
            self.radius = int(np.clip(self.radius + (a == 6) - (a == 7), 0, self.c.max_radius))
        new = _dice(self.mask(), self.b.labels[self.volume])
        diff = new - self.dice
        reward = 0.0 if stop else (float(self.p.reward_scale) * diff if self.c.reward == "delta" else float(np.sign(diff)))
        self.dice, self.t, self.done = new, self.t + 1, stop
        truncated = self.t >= int(self.p.max_steps) and not stop
        return self.obs(), reward, stop, truncated, {"dice": new}


class ReferenceVoxelSeg:
    """Voxel agents on a probability map (spec: :mod:`jaxmed.envs.voxel_seg`)."""

    def __init__(self, config, params, bank):
        self.c, self.p, self.b = config, params, _BankArrays(bank)

    def reset_at(self, volume: int) -> np.ndarray:
        self.volume, self.t = int(volume), 0
        if self.c.start == "atlas":
            start = self.b.atlas[self.volume]
        else:
            im = self.b.intensity(self.volume)
            start = (im >= np.float32(self.p.start_low)) & (im <= np.float32(self.p.start_high))
        conf = float(np.clip(np.float32(self.p.start_confidence), self.c.p_min, 1 - self.c.p_min))
        self.prob = np.where(start, conf, 1 - conf).astype(np.float32)
        return self.obs()

    def obs(self) -> np.ndarray:
        d, r = self.c.crop_size, self.c.patch_size // 2
        image = self.b.images[self.volume]
        prob = np.round(self.prob * 255.0).astype(np.uint8) if self.b.uint8 else self.prob.astype(image.dtype)
        dense = np.pad(np.stack([image, prob]), ((0, 0),) + ((r, r),) * 3)
        out = np.empty((d**3, 2) + (self.c.patch_size,) * 3, image.dtype)
        for i, (x, y, z) in enumerate(np.ndindex(d, d, d)):
            out[i] = dense[:, x:x + 2 * r + 1, y:y + 2 * r + 1, z:z + 2 * r + 1]
        return out

    def step(self, actions):
        deltas = np.asarray(self.c.deltas, np.float32)[np.asarray(actions).reshape((self.c.crop_size,) * 3)]
        new = np.clip(self.prob + deltas, np.float32(self.c.p_min), np.float32(1 - self.c.p_min)).astype(np.float32)
        label = self.b.labels[self.volume]
        eps = self.c.p_min * 0.5
        reward = float(self.p.reward_scale) * (_bce(self.prob, label, eps) - _bce(new, label, eps))
        self.prob, self.t = new, self.t + 1
        truncated = self.t >= int(self.p.max_steps)
        return self.obs(), reward.reshape(-1), False, truncated, {"dice": _dice(new > 0.5, label)}
