"""Resizing of feature maps exactly as `torch.nn.functional.interpolate` does it.

`jax.image.resize` uses a different cubic kernel (a=-0.5) and antialiases when shrinking, so it
cannot reproduce the reference implementations (CLIP's position-embedding resampling, LLaVA-HR's
grid alignment). Resizing is separable, so each axis becomes a small interpolation matrix built
with numpy at trace time (shapes are static) and applied with one einsum.

`antialias=True` is torch's antialiased path (PIL's filters): a support widened by the scale when
shrinking, Keys' cubic with a = -0.5 (not -0.75) even when growing, and taps outside the input
dropped with the weights renormalised instead of clamped to the edge. LLaVA-HR's and EAGLE's CLIP
resample their position tables this way (`resample_pos_embed(..., antialias=True)`).
"""
from typing import Literal

import jax.numpy as jnp
import numpy as np

from mmjax.shapes import Array, Float

Mode = Literal["bicubic", "bilinear"]
MODES = ("bicubic", "bilinear")
_CUBIC_A = -0.75  # torch's cubic convolution coefficient.


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """Weights of taps at offsets -1, 0, 1, 2 for fractional position t. Returns [..., 4]."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _antialiased_matrix(in_size: int, out_size: int, mode: Mode) -> np.ndarray:
  """torch's `_compute_indices_min_size_weights_aa` (align_corners=False, no scale factor)."""
  scale = in_size / out_size
  support = (2.0 if mode == "bilinear" else 4.0) * 0.5 * max(scale, 1.0)
  invscale = 1.0 / scale if scale >= 1.0 else 1.0

  def kernel(x):
    x = np.abs(x)
    if mode == "bilinear":
      return np.maximum(0.0, 1.0 - x)
    a = -0.5
    return np.where(x < 1.0, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2.0, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))

  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    weights = kernel((np.arange(lo, hi) - center + 0.5) * invscale)
    total = weights.sum()
    matrix[i, lo:hi] = weights / total if total != 0 else weights
  return matrix


def interpolation_matrix(in_size: int, out_size: int, mode: Mode,
                         align_corners: bool = False, antialias: bool = False) -> np.ndarray:
  """The [out_size, in_size] matrix that resizes one axis like torch's `interpolate`."""
  if mode not in MODES:
    raise ValueError(f"Unknown interpolation mode {mode!r}; valid modes: {MODES}.")
  if in_size < 1 or out_size < 1:
    raise ValueError(f"Sizes must be positive, got in_size={in_size}, out_size={out_size}.")
  if antialias:
    if align_corners:
      raise ValueError("antialias=True is torch's path for align_corners=False only.")
    return _antialiased_matrix(in_size, out_size, mode)
  out = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = out * scale
  else:
    src = (out + 0.5) * (in_size / out_size) - 0.5
    if mode == "bilinear":  # torch clamps negative source positions for linear modes only.
      src = np.maximum(src, 0.0)
  base = np.floor(src)
  frac = src - base
  base = base.astype(np.int64)
  if mode == "bilinear":
    offsets, weights = np.array([0, 1]), np.stack([1 - frac, frac], axis=-1)
  else:
    offsets, weights = np.array([-1, 0, 1, 2]), _cubic_weights(frac)
  taps = np.clip(base[:, None] + offsets[None, :], 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.repeat(np.arange(out_size), len(offsets)), taps.ravel()), weights.ravel())
  return matrix


def resize(x: Float[Array, "B H W C"], size: tuple[int, int], mode: Mode,
           align_corners: bool = False, antialias: bool = False) -> Float[Array, "B h w C"]:
  """Resizes the spatial axes of a channels-last map to `size` = (h, w)."""
  h_in, w_in = x.shape[1:3]
  if (h_in, w_in) == tuple(size):
    return x
  rows = jnp.asarray(interpolation_matrix(h_in, size[0], mode, align_corners, antialias), x.dtype)
  cols = jnp.asarray(interpolation_matrix(w_in, size[1], mode, align_corners, antialias), x.dtype)
  return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols, precision="highest")
