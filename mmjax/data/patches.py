"""Native-resolution images as flat patch sequences, packed into fixed-length rows.

Qwen2-VL encodes an image at (nearly) its own size: `resolution.smart_resize` picks a size that is
a multiple of patch × merge, the image becomes one patch cube per patch (the still image repeated
over `temporal_patch_size` frames), listed so that every merge × merge block of patches is
contiguous, and each patch keeps its (row, column) for the 2D rotary embedding. `pack` then places
several images into one row of a static length, with segment ids that keep their attention apart,
so a jitted tower compiles once per row length (`bucket`) instead of once per image size.
"""
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mmjax.data import resolution


@dataclasses.dataclass(frozen=True)
class NativeImage:
  """One image's patches: `patches` [n, 3·T·P·P] float32, `positions` [n, 2] (row, column in the
  patch grid), `grid` (rows, cols) of patches; n = rows · cols."""
  patches: np.ndarray
  positions: np.ndarray
  grid: tuple[int, int]

  @property
  def num_tokens(self) -> int:
    return len(self.patches)


def vision_positions(rows: int, cols: int, merge: int) -> np.ndarray:
  """(row, column) of every patch of a rows × cols grid, in merge-block order: the blocks
  row-major, and within a block its merge × merge patches row-major. → int32 [rows·cols, 2]."""
  if rows % merge or cols % merge:
    raise ValueError(f"Patch grid {rows}x{cols} is not a multiple of merge={merge}.")
  r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
  block = lambda a: a.reshape(rows // merge, merge, cols // merge, merge).swapaxes(1, 2).ravel()
  return np.stack([block(r), block(c)], axis=-1).astype(np.int32)


def patchify(pixels: np.ndarray, patch: int = 14, merge: int = 2,
             temporal_patch_size: int = 2) -> NativeImage:
  """Normalised float pixels (H, W, 3), H and W multiples of patch·merge → `NativeImage`, each
  patch flattened as (channel, frame, row, column) like the reference processor's."""
  h, w, c = pixels.shape
  if h % (patch * merge) or w % (patch * merge):
    raise ValueError(f"Image of {h}x{w} pixels is not a multiple of patch·merge = "
                     f"{patch * merge}; resize it with resolution.smart_resize first.")
  rows, cols = h // patch, w // patch
  x = pixels.astype(np.float32).reshape(rows // merge, merge, patch, cols // merge, merge, patch, c)
  x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (block r, block c, r, c, channel, pixel y, pixel x).
  x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, patch, patch))
  return NativeImage(np.ascontiguousarray(x.reshape(rows * cols, -1)),
                     vision_positions(rows, cols, merge), (rows, cols))


def native_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 patch: int = 14, merge: int = 2, temporal_patch_size: int = 2,
                 min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> NativeImage:
  """uint8 (H, W, 3) → `NativeImage`: resized (bicubic) to `smart_resize`'s size, scaled to
  [0, 1] and normalised with mean / std, then `patchify`."""
  h, w = resolution.smart_resize(image.shape[0], image.shape[1], patch * merge, min_pixels,
                                 max_pixels)
  pixels = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), np.float32) / 255.0
  pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return patchify(pixels, patch, merge, temporal_patch_size)


def bucket(num_tokens: int, buckets: Sequence[int]) -> int:
  """The smallest row length in `buckets` that holds `num_tokens` patches."""
  fitting = [b for b in sorted(buckets) if b >= num_tokens]
  if not fitting:
    raise ValueError(f"{num_tokens} patches exceed the largest bucket {max(buckets)}; raise "
                     "max_pixels' bucket or lower the image budget.")
  return fitting[0]


def pack(images: Sequence[NativeImage], length: int) -> dict[str, np.ndarray]:
  """Images placed one after another in a row of `length` patches: `patches` [L, K], `positions`
  [L, 2], `segment_ids` [L] (image i has id i + 1, padding 0). Raises if they do not fit."""
  total = sum(im.num_tokens for im in images)
  if total > length:
    raise ValueError(f"{len(images)} images of {total} patches do not fit a row of {length}.")
  dim = images[0].patches.shape[1] if images else 0
  patches = np.zeros((length, dim), np.float32)
  positions = np.zeros((length, 2), np.int32)
  segment_ids = np.zeros((length,), np.int32)
  start = 0
  for i, im in enumerate(images):
    end = start + im.num_tokens
    patches[start:end], positions[start:end], segment_ids[start:end] = (
        im.patches, im.positions, i + 1)
    start = end
  return {"patches": patches, "positions": positions, "segment_ids": segment_ids}


def pack_greedy(token_counts: Sequence[int], length: int) -> list[list[int]]:
  """Indices of images grouped into rows of `length` patches, first fit in arrival order (an
  image opens a new row when it fits no open one)."""
  rows: list[list[int]] = []
  free: list[int] = []
  for i, n in enumerate(token_counts):
    if n > length:
      raise ValueError(f"Image {i} has {n} patches, more than a row of {length}.")
    slot = next((r for r, f in enumerate(free) if f >= n), None)
    if slot is None:
      rows.append([i])
      free.append(length - n)
    else:
      rows[slot].append(i)
      free[slot] -= n
  return rows


def padding_waste(token_counts: Sequence[int], rows: int, length: int) -> float:
  """Fraction of the `rows` × `length` patch slots that hold padding."""
  return 1.0 - sum(token_counts) / (rows * length) if rows else 0.0


def geometric_buckets(smallest: int, largest: int, multiple: int = 4) -> tuple[int, ...]:
  """Row lengths doubling from `smallest` to `largest` (rounded up to `multiple`): at most
  log2(largest / smallest) + 1 compiled shapes, padding under half of any row."""
  out, n = [], smallest
  while n < largest:
    out.append(math.ceil(n / multiple) * multiple)
    n *= 2
  out.append(math.ceil(largest / multiple) * multiple)
  return tuple(dict.fromkeys(out))
