"""Qwen2-VL's M-RoPE positions: (temporal, height, width) ids for every token of a sequence.

Text tokens take equal ids on the three axes, counting up by one (plain 1D RoPE). The tokens of
an image (one per merge × merge block of patches, row-major) share the temporal id and take
row / column ids, all offset by the position where the image starts; the text after it continues
from that start plus the larger side of the merged grid (= the image's largest id + 1). As
`Qwen2VLModel.get_rope_index` does for images.
"""
import itertools
from collections.abc import Sequence

import numpy as np

TEXT, IMAGE = 0, 1


def mrope_positions(token_types: Sequence[int], grids: Sequence[tuple[int, int, int]],
                    merge: int = 2) -> tuple[np.ndarray, int]:
  """Positions int32 [3, T] of one sequence and its rope delta (largest id + 1 − T, which
  cached decoding adds to the step's 1D position).

  `token_types`: TEXT or IMAGE per token; `grids`: the (t, h, w) patch grid of each image, in
  order (each image's run of IMAGE tokens must hold t·h·w / merge² tokens)."""
  parts, pos, grid_iter = [], 0, iter(grids)
  for kind, run in itertools.groupby(token_types):
    n = len(list(run))
    if kind == TEXT:
      parts.append(np.broadcast_to(pos + np.arange(n), (3, n)))
      pos += n
      continue
    if kind != IMAGE:
      raise ValueError(f"Unknown token type {kind}; valid: TEXT={TEXT}, IMAGE={IMAGE}.")
    grid = next(grid_iter, None)
    if grid is None:
      raise ValueError(f"More image runs than the {len(grids)} grids given.")
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    if t * h * w != n:
      raise ValueError(f"An image run of {n} tokens does not match its grid {tuple(grid)} "
                       f"({t * h * w} tokens after {merge}x{merge} merging).")
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    parts.append(pos + np.stack([tt.ravel(), hh.ravel(), ww.ravel()]))
    pos += max(h, w)
  if next(grid_iter, None) is not None:
    raise ValueError(f"{len(grids)} grids given for fewer image runs.")
  positions = np.concatenate(parts, axis=1).astype(np.int32) if parts else np.zeros((3, 0),
                                                                                     np.int32)
  delta = int(positions.max()) + 1 - positions.shape[1] if positions.size else 0
  return positions, delta


def batch_mrope_positions(token_types: np.ndarray, valid: np.ndarray,
                          grids: Sequence[Sequence[tuple[int, int, int]]],
                          merge: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Rows of a padded batch: token_types and valid [B, T] → positions [3, B, T] (0 at padding)
  and deltas [B]."""
  b, t = token_types.shape
  positions = np.zeros((3, b, t), np.int32)
  deltas = np.zeros((b,), np.int32)
  for i in range(b):
    row, deltas[i] = mrope_positions(token_types[i][valid[i]].tolist(), grids[i], merge)
    positions[:, i, valid[i]] = row
  return positions, deltas
