"""Pixel unshuffle (space-to-depth): fewer tokens, wider channels, nothing lost.

InternVL and LEO shrink a ViT's token grid this way before the projector (METHODS §2.5):
`(h, w, C) → (h/r, w/r, r·r·C)` with the channels of each r×r cell in (dy, dx, c) order, so for
r = 2 `out[a, b] = concat(x[2a, 2b], x[2a, 2b+1], x[2a+1, 2b], x[2a+1, 2b+1])` (InternVL's
`pixel_shuffle`, ps_version v2). `channel_major=True` is torch's `F.pixel_unshuffle` on a
channels-first map, (c, dy, dx) order, which LEO applies to SAM's neck output.
"""
import jax.numpy as jnp

from mmjax.shapes import Array, Float


def pixel_unshuffle(x: Float[Array, "B H W C"], factor: int,
                    channel_major: bool = False) -> Float[Array, "B h w D"]:
  """Space-to-depth by `factor`: h = H / factor, w = W / factor, D = factor² · C."""
  b, h, w, c = x.shape
  if factor < 1 or h % factor or w % factor:
    raise ValueError(f"pixel_unshuffle: a {h}x{w} map does not split into {factor}x{factor} "
                     "cells; the factor must be positive and divide both sides.")
  x = x.reshape(b, h // factor, factor, w // factor, factor, c)
  order = (0, 1, 3, 5, 2, 4) if channel_major else (0, 1, 3, 2, 4, 5)
  return jnp.transpose(x, order).reshape(b, h // factor, w // factor, factor * factor * c)

