"""Resolution policies: at what size an image is encoded and how many visual tokens it yields.

Pure functions of the image size (and numpy / PIL pixel operations), so a batch can be budgeted
before anything is encoded. Each rule follows its reference implementation exactly, rounding and
tie-breaks included (METHODS §3); the parity tests compare them on hundreds of random sizes.

  * Qwen2-VL native resolution: `smart_resize`, `qwen2vl_num_tokens`.
  * InternVL 1.5 dynamic tiling: `internvl_grid`, `internvl_tiles`, `internvl_num_tokens`.
  * LLaVA-NeXT / OneVision AnyRes: `select_best_resolution`, `anyres_resized_size`,
    `anyres_crops`, `anyres_grid_shape`, `unpad_bounds`, `unpad`, `onevision_pooled_size`,
    `onevision_num_tokens`.
  * XComposer2-4KHD: `xcomposer_hd_size`, `xcomposer_hd_image`, `xcomposer_plan`,
    `xcomposer_num_tokens`.
  * Oryx: `oryx_size`, `oryx_views`, `oryx_position_plan`, `oryx_layout`, `oryx_num_tokens`.

Sizes are (height, width) everywhere except `internvl_grid`'s answer, which is (cols, rows) as
InternVL and GOT-OCR2 return it.
"""
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

# LLaVA-OneVision's candidate canvases ("anyres_max_9", grid 1..6 × 1..6 of 384 px crops).
ONEVISION_PINPOINTS = tuple((384 * rows, 384 * cols) for rows in range(1, 7)
                            for cols in range(1, 7))


def _check_size(height: int, width: int) -> None:
  if height < 1 or width < 1:
    raise ValueError(f"Image size must be positive, got height={height}, width={width}.")


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
  """Qwen2-VL's encoded size: both sides multiples of `factor`, the area within
  [min_pixels, max_pixels], the aspect ratio kept as closely as that allows.

  Sides are rounded (half to even) to the factor; an area over max_pixels is scaled down and
  floored (never below one factor), one under min_pixels scaled up and ceiled.
  Raises ValueError when the aspect ratio exceeds 200 (as the reference does).
  """
  _check_size(height, width)
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"Aspect ratio must be at most 200, got {height}x{width} "
                     f"({max(height, width) / min(height, width):.1f}).")
  h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def qwen2vl_num_tokens(height: int, width: int, patch: int = 14, merge: int = 2,
                       min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> int:
  """LLM tokens of one image under Qwen2-VL (one per merge×merge block of patches), without the
  vision start / end markers."""
  h, w = smart_resize(height, width, patch * merge, min_pixels, max_pixels)
  return (h // (patch * merge)) * (w // (patch * merge))


def internvl_grid(height: int, width: int, tile: int = 448, min_num: int = 1,
                  max_num: int = 12) -> tuple[int, int]:
  """InternVL 1.5's tile grid (cols, rows): the grid with min_num ≤ cols·rows ≤ max_num whose
  aspect ratio is closest to the image's.

  Candidates are visited by increasing tile count (cols major within a count); on an exact tie a
  later grid wins only while the image covers more than half of its canvas, so small images are
  not upscaled onto many tiles.
  """
  _check_size(height, width)
  if not 1 <= min_num <= max_num:
    raise ValueError(f"Need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}.")
  grids = sorted(((c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1)
                  if min_num <= c * r <= max_num), key=lambda g: g[0] * g[1])
  aspect, area = width / height, width * height
  best, best_diff = (1, 1), float("inf")
  for cols, rows in grids:
    diff = abs(aspect - cols / rows)
    if diff < best_diff:
      best, best_diff = (cols, rows), diff
    elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
      best = (cols, rows)
  return best


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of a uint8 (H, W, 3) image, as the reference processors do with PIL."""
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def _split(image: np.ndarray, size: int) -> np.ndarray:
  """(rows·size, cols·size, 3) → (rows·cols, size, size, 3), row-major."""
  h, w, c = image.shape
  tiles = image.reshape(h // size, size, w // size, size, c).swapaxes(1, 2)
  return tiles.reshape(-1, size, size, c)


def internvl_tiles(image: np.ndarray, tile: int = 448, min_num: int = 1, max_num: int = 12,
                   thumbnail: bool = True) -> np.ndarray:
  """uint8 (H, W, 3) → (n, tile, tile, 3): the image resized onto its grid and cut row-major, plus
  (when there is more than one tile and `thumbnail`) the whole image squashed to one tile, last."""
  cols, rows = internvl_grid(image.shape[0], image.shape[1], tile, min_num, max_num)
  tiles = _split(_resize(image, rows * tile, cols * tile), tile)
  if thumbnail and len(tiles) > 1:
    tiles = np.concatenate([tiles, _resize(image, tile, tile)[None]])
  return tiles


def internvl_num_tokens(height: int, width: int, tile: int = 448, min_num: int = 1,
                        max_num: int = 12, tokens_per_tile: int = 256,
                        thumbnail: bool = True) -> int:
  """LLM tokens of one image under InternVL 1.5 (256 per 448 px tile after pixel unshuffle)."""
  cols, rows = internvl_grid(height, width, tile, min_num, max_num)
  tiles = cols * rows + (thumbnail and cols * rows > 1)
  return tiles * tokens_per_tile


def select_best_resolution(height: int, width: int,
                           candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
  """LLaVA-NeXT's canvas (height, width) among `candidates`: the one keeping the most of the
  image's pixels when it is fitted inside (never counting more than the original has), ties
  broken by the least wasted canvas; the first of equals wins."""
  _check_size(height, width)
  if not candidates:
    raise ValueError("select_best_resolution needs at least one candidate resolution.")
  best, best_effective, best_waste = None, 0, float("inf")
  for cand_h, cand_w in candidates:
    scale = min(cand_w / width, cand_h / height)
    effective = min(int(width * scale) * int(height * scale), width * height)
    waste = cand_h * cand_w - effective
    if effective > best_effective or (effective == best_effective and waste < best_waste):
      best, best_effective, best_waste = (cand_h, cand_w), effective, waste
  if best is None:
    raise ValueError(f"No candidate in {list(candidates)} can hold any pixel of a "
                     f"{height}x{width} image.")
  return best


def anyres_resized_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
  """The size an image is resized to inside its AnyRes canvas: the limiting side fills the
  canvas, the other is scaled with it and rounded up (capped at the canvas)."""
  target_h, target_w = target
  scale_w, scale_h = target_w / width, target_h / height
  if scale_w < scale_h:
    return min(math.ceil(height * scale_w), target_h), target_w
  return target_h, min(math.ceil(width * scale_h), target_w)


def anyres_crops(image: np.ndarray, candidates: Sequence[tuple[int, int]],
                 crop: int) -> np.ndarray:
  """uint8 (H, W, 3) → (1 + rows·cols, crop, crop, 3): the whole image squashed to one crop
  first, then the image resized into its best canvas, zero-padded centred (an odd pixel goes to
  the bottom / right) and cut row-major into crops."""
  target = select_best_resolution(image.shape[0], image.shape[1], candidates)
  if target[0] % crop or target[1] % crop:
    raise ValueError(f"Candidate resolution {target} is not a multiple of the crop size {crop}.")
  new_h, new_w = anyres_resized_size(image.shape[0], image.shape[1], target)
  top, left = (target[0] - new_h) // 2, (target[1] - new_w) // 2
  canvas = np.zeros((*target, 3), np.uint8)
  canvas[top:top + new_h, left:left + new_w] = _resize(image, new_h, new_w)
  return np.concatenate([_resize(image, crop, crop)[None], _split(canvas, crop)])


def anyres_grid_shape(height: int, width: int, candidates: Sequence[tuple[int, int]],
                      crop: int) -> tuple[int, int]:
  """(rows, cols) of crops an image is cut into."""
  target_h, target_w = select_best_resolution(height, width, candidates)
  return target_h // crop, target_w // crop


def unpad_bounds(map_height: int, map_width: int, height: int,
                 width: int) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the part of a feature map of an AnyRes canvas that holds
  image rather than padding, for an original image of height×width (LLaVA-NeXT's `unpad_image`:
  the same padding is cut from both sides, so an odd remainder stays at the far side)."""
  _check_size(height, width)
  if width / height > map_width / map_height:
    new_height = int(round(height * (map_width / width), 7))
    pad = (map_height - new_height) // 2
    return pad, map_height - pad, 0, map_width
  new_width = int(round(width * (map_height / height), 7))
  pad = (map_width - new_width) // 2
  return 0, map_height, pad, map_width - pad


def unpad(features: np.ndarray, height: int, width: int) -> np.ndarray:
  """(map_h, map_w, C) features of an AnyRes canvas → the rows and columns that hold image."""
  top, bottom, left, right = unpad_bounds(features.shape[0], features.shape[1], height, width)
  return features[top:bottom, left:right]


def onevision_pooled_size(map_height: int, map_width: int, grid: int = 27,
                          max_crops: int = 9) -> tuple[int, int]:
  """Size of the unpadded feature map after OneVision's `anyres_max_<max_crops>` budget: a map of
  more than 1.1× the area of `max_crops` crops is bilinearly shrunk by the ratio of the sides
  (each side floored). `max_crops` 0: no budget (LLaVA-NeXT), the map as it is."""
  if max_crops <= 0:
    return map_height, map_width
  ratio = math.sqrt(map_height * map_width / (max_crops * grid * grid))
  if ratio > 1.1:
    return int(map_height // ratio), int(map_width // ratio)
  return map_height, map_width


def onevision_num_tokens(height: int, width: int,
                         candidates: Sequence[tuple[int, int]] = ONEVISION_PINPOINTS,
                         crop: int = 384, grid: int = 27, max_crops: int = 9) -> int:
  """LLM tokens of one image under LLaVA-OneVision AnyRes: the base image's grid², then the
  unpadded (and budgeted) map of the crops with one newline token per row."""
  rows, cols = anyres_grid_shape(height, width, candidates, crop)
  top, bottom, left, right = unpad_bounds(rows * grid, cols * grid, height, width)
  pooled_h, pooled_w = onevision_pooled_size(bottom - top, right - left, grid, max_crops)
  return grid * grid + pooled_h * pooled_w + pooled_h


def _bilinear_axis(size_in: int, size_out: int) -> tuple[np.ndarray, ...]:
  """torch's bilinear resampling along one axis (align_corners=False, no antialias): for each
  output index, the two source indices and their weights, computed in float32 as torch does."""
  scale = np.float32(size_in) / np.float32(size_out)
  # scale · (i + 0.5) − 0.5 rounded once, as the fused multiply-add torch's kernel compiles to.
  src = np.maximum(np.float32(np.float64(scale) * (np.arange(size_out) + 0.5) - 0.5),
                   np.float32(0))
  low = src.astype(np.int64)
  high = np.minimum(low + 1, size_in - 1)
  frac = src - low.astype(np.float32)
  return low, high, np.float32(1) - frac, frac


def onevision_plan(height: int, width: int,
                   candidates: Sequence[tuple[int, int]] = ONEVISION_PINPOINTS, crop: int = 384,
                   grid: int = 27, max_crops: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """How LLaVA-OneVision turns the crops' tokens of one image into its map tokens, as a static
  gather: the crops' grid² tokens each (base image first, then the crops row-major, as
  `anyres_crops` orders them) are laid out as one map, unpadded, bilinearly shrunk to the
  `anyres_max_<max_crops>` budget and followed by a newline token after every row.

  Returns, per map token (T = pooled_h · (pooled_w + 1), row-major, newlines last in each row):
  index int32 [T, 4] (tokens of the flattened crops to mix), weight float32 [T, 4] and kind
  int32 [T] (1: a feature, 2: the newline token). The base image's grid² tokens, which precede
  these in the LLM, are not part of the plan.
  """
  rows, cols = anyres_grid_shape(height, width, candidates, crop)
  top, bottom, left, right = unpad_bounds(rows * grid, cols * grid, height, width)
  map_h, map_w = bottom - top, right - left
  pooled_h, pooled_w = onevision_pooled_size(map_h, map_w, grid, max_crops)
  if (pooled_h, pooled_w) == (map_h, map_w):  # Under budget: the unpadded map as it is.
    ys = (np.arange(map_h),) * 2 + (np.ones(map_h, np.float32), np.zeros(map_h, np.float32))
    xs = (np.arange(map_w),) * 2 + (np.ones(map_w, np.float32), np.zeros(map_w, np.float32))
  else:
    ys, xs = _bilinear_axis(map_h, pooled_h), _bilinear_axis(map_w, pooled_w)

  def token(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    y, x = y + top, x + left
    crop_index = 1 + (y // grid) * cols + x // grid
    return crop_index * grid * grid + (y % grid) * grid + x % grid

  index, weight = [], []
  for y, wy in ((ys[0], ys[2]), (ys[1], ys[3])):
    for x, wx in ((xs[0], xs[2]), (xs[1], xs[3])):
      index.append(token(y[:, None], x[None, :]))
      weight.append(wy[:, None] * wx[None, :])
  index = np.stack(index, -1)  # [pooled_h, pooled_w, 4]
  weight = np.stack(weight, -1)
  # A newline slot after every row: index 0 with zero weight, kind 2.
  index = np.concatenate([index, np.zeros((pooled_h, 1, 4), index.dtype)], 1)
  weight = np.concatenate([weight, np.zeros((pooled_h, 1, 4), np.float32)], 1)
  kind = np.concatenate([np.ones((pooled_h, pooled_w), np.int32),
                         np.full((pooled_h, 1), 2, np.int32)], 1)
  return (index.reshape(-1, 4).astype(np.int32), weight.reshape(-1, 4).astype(np.float32),
          kind.reshape(-1))


def onevision_plan_budget(candidates: Sequence[tuple[int, int]], crop: int, grid: int,
                          max_crops: int) -> int:
  """An upper bound on the plan's length (map tokens and newlines) over all image sizes: the
  unpadded map holds at most its canvas' tokens and, unshrunk, at most 1.1² times the budget;
  one newline per row of at most the tallest canvas. `max_crops` 0: no budget."""
  def bound(canvas: tuple[int, int]) -> int:
    rows, cols = canvas[0] // crop, canvas[1] // crop
    tokens = rows * cols * grid * grid
    return (min(tokens, int(1.21 * max_crops * grid * grid)) if max_crops > 0 else tokens) + \
        rows * grid
  return max(bound(c) for c in candidates)


def xcomposer_hd_size(height: int, width: int, hd_num: int = 25,
                      tile: int = 336) -> tuple[tuple[int, int], tuple[int, int]]:
  """InternLM-XComposer2-4KHD's `HD_transform` geometry: ((resized h, w), (canvas h, w)).

  In landscape orientation (a portrait image is transposed first and back after), the widest
  whole number of tiles `scale` whose rows, ceil(scale / aspect), still give at most `hd_num`
  tiles; the image is resized to that width (height int(width / aspect)) and its height padded
  to a multiple of the tile, centred (the odd pixel at the bottom)."""
  _check_size(height, width)
  if hd_num < 1:
    raise ValueError(f"hd_num={hd_num} must be at least 1.")
  portrait = width < height
  if portrait:
    height, width = width, height
  ratio = width / height
  scale = 1
  while scale * math.ceil(scale / ratio) <= hd_num:
    scale += 1
  scale -= 1
  new_w = int(scale * tile)
  new_h = max(int(new_w / ratio), 1)  # The reference fails on the 0 px of extreme aspects.
  canvas_h = int(math.ceil(new_h / tile) * tile)
  if portrait:
    return (new_w, new_h), (new_w, canvas_h)
  return (new_h, new_w), (canvas_h, new_w)


def xcomposer_hd_image(image: np.ndarray, hd_num: int = 25, tile: int = 336) -> np.ndarray:
  """uint8 (H, W, 3) → the HD canvas: resized (PIL bilinear, in landscape orientation as the
  reference does it) and padded with white to whole tiles."""
  (new_h, new_w), (canvas_h, canvas_w) = xcomposer_hd_size(image.shape[0], image.shape[1],
                                                           hd_num, tile)
  pil = Image.fromarray(image)
  portrait = image.shape[1] < image.shape[0]
  if portrait:  # Resampled in the transposed orientation, as `HD_transform` does.
    pil, (new_h, new_w), (canvas_h, canvas_w) = (pil.transpose(Image.TRANSPOSE), (new_w, new_h),
                                                 (canvas_w, canvas_h))
  resized = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
  top = (canvas_h - new_h) // 2
  canvas = np.full((canvas_h, canvas_w, 3), 255, np.uint8)
  canvas[top:top + new_h] = resized
  return canvas.transpose(1, 0, 2) if portrait else canvas


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """float32 [size_out, size_in]: torch's bicubic resampling along one axis (align_corners=False,
  no antialias, A = -0.75, edge indices clamped), so a 2-D resize is M_h @ x @ M_w^T."""
  a = -0.75
  scale = np.float32(size_in) / np.float32(size_out)
  src = np.float32(np.float64(scale) * (np.arange(size_out) + 0.5) - 0.5)
  base = np.floor(src).astype(np.int64)
  t = (src - base).astype(np.float64)

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)
  out = np.zeros((size_out, size_in), np.float64)
  for k in range(4):
    np.add.at(out, (np.arange(size_out), np.clip(base - 1 + k, 0, size_in - 1)), weights[:, k])
  return out.astype(np.float32)


def xcomposer_plan(rows: int, cols: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
  """XComposer2-4KHD's token layout for a canvas of rows × cols tiles whose unshuffled token
  grids are grid × grid (12 for 336-px tiles): the global view's grid with a newline after every
  row, the separator, then the tiles' tokens as one map with a newline after every row.

  Returns index int32 [T] (into the flattened tokens of [global view, tiles row-major]) and kind
  int32 [T] (1: a token, 2: the newline, 3: the separator); T = (rows·cols + 1)·grid² + 1 +
  (rows + 1)·grid."""
  n = grid * grid
  y, x = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
  glb = np.concatenate([y * grid + x, np.zeros((grid, 1), np.int64)], 1)
  glb_kind = np.concatenate([np.ones((grid, grid), np.int32), np.full((grid, 1), 2, np.int32)], 1)
  y, x = np.meshgrid(np.arange(rows * grid), np.arange(cols * grid), indexing="ij")
  tile = 1 + (y // grid) * cols + x // grid
  sub = np.concatenate([tile * n + (y % grid) * grid + x % grid,
                        np.zeros((rows * grid, 1), np.int64)], 1)
  sub_kind = np.concatenate([np.ones((rows * grid, cols * grid), np.int32),
                             np.full((rows * grid, 1), 2, np.int32)], 1)
  index = np.concatenate([glb.reshape(-1), [0], sub.reshape(-1)]).astype(np.int32)
  kind = np.concatenate([glb_kind.reshape(-1), [3], sub_kind.reshape(-1)]).astype(np.int32)
  return index, kind


def xcomposer_num_tokens(height: int, width: int, hd_num: int = 25, tile: int = 336,
                         grid: int = 12) -> int:
  """Visual tokens of one image under XComposer2-4KHD (before any LLM-side tokens)."""
  _, (canvas_h, canvas_w) = xcomposer_hd_size(height, width, hd_num, tile)
  rows, cols = canvas_h // tile, canvas_w // tile
  return (rows * cols + 1) * grid * grid + 1 + (rows + 1) * grid


def oryx_size(height: int, width: int, multiple: int = 32, base: int = 0,
              max_res: int = 1536, min_res: int = 0) -> tuple[int, int, bool]:
  """Oryx's `resize_images` (with the authors' inference settings, PAD2STRIDE on):
  (height, width, padded).

  base > 0 (the low-resolution view, `LOWRES_RESIZE=384x32`): scaled to an area of base², each
  side floored to the multiple. base = 0 (the native view, `HIGHRES_BASE=0x32`): an area over
  max_res² (or under min_res²) is scaled to it the same way; any other image keeps its size and
  is padded (centred, grey 127) up to whole multiples — `padded` is True then. A side the
  reference floors to 0 px (aspect ratios beyond base / multiple) is kept at one multiple.
  """
  _check_size(height, width)
  scale = None
  if base:
    scale = math.sqrt(base * base / (width * height))
  elif width * height > max_res * max_res:
    scale = math.sqrt(max_res * max_res / (width * height))
  elif width * height < min_res * min_res:
    scale = math.sqrt(min_res * min_res / (width * height))
  if scale is None:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple, True
  return (max(int(height * scale / multiple), 1) * multiple,
          max(int(width * scale / multiple), 1) * multiple, False)


def _oryx_min_side(height: int, width: int) -> tuple[int, int]:
  """The reference first enlarges an image with a side under 32 px so that side becomes 64."""
  if width < 32 and height < 32:
    ratio = 64 / min(width, height)
  elif width < 32:
    ratio = 64 / width
  elif height < 32:
    ratio = 64 / height
  else:
    return height, width
  return int(height * ratio), int(width * ratio)


def oryx_views(image: np.ndarray, multiple: int = 32, low_base: int = 384,
               max_res: int = 1536) -> tuple[np.ndarray, np.ndarray]:
  """uint8 (H, W, 3) → Oryx's (low-resolution view, native view), uint8, as the authors'
  `process_anyres_highres_image_genli` makes them (PIL bicubic resizes, grey padding)."""
  pil = Image.fromarray(image)
  height, width = _oryx_min_side(*image.shape[:2])
  if (height, width) != image.shape[:2]:
    pil = pil.resize((width, height), Image.BICUBIC)
  views = []
  for base in (low_base, 0):
    h, w, padded = oryx_size(height, width, multiple, base, max_res)
    if padded:
      canvas = Image.new("RGB", (w, h), (127, 127, 127))
      canvas.paste(pil, ((w - width) // 2, (h - height) // 2))
      views.append(np.asarray(canvas))
    else:
      views.append(np.asarray(pil.resize((w, h), Image.BICUBIC)))
  return views[0], views[1]


def oryx_position_plan(rows: int, cols: int, table: int) -> tuple[np.ndarray, np.ndarray]:
  """Oryx's `rescale_positional_embedding`: the learned table×table position table bilinearly
  resized (torch, align_corners=False) to a rows×cols patch grid, as a gather plan — patch
  (r, c) row-major gets Σ weight[k] · table_flat[index[k]]. → int32 [rows·cols, 4],
  float32 [rows·cols, 4]; the identity when the grid is the table's own."""
  if (rows, cols) == (table, table):
    index = np.arange(table * table, dtype=np.int32)[:, None].repeat(4, axis=1)
    return index, np.tile(np.array([1, 0, 0, 0], np.float32), (table * table, 1))
  y0, y1, wy0, wy1 = _bilinear_axis(table, rows)
  x0, x1, wx0, wx1 = _bilinear_axis(table, cols)
  index = np.stack([y0[:, None] * table + x0[None], y0[:, None] * table + x1[None],
                    y1[:, None] * table + x0[None], y1[:, None] * table + x1[None]], axis=-1)
  weight = np.stack([wy0[:, None] * wx0[None], wy0[:, None] * wx1[None],
                     wy1[:, None] * wx0[None], wy1[:, None] * wx1[None]], axis=-1)
  return index.reshape(-1, 4).astype(np.int32), weight.reshape(-1, 4).astype(np.float32)


ORYX_KINDS = ("padding", "token", "newline", "separator", "begin", "end")


def oryx_layout(low: tuple[int, int], high: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """The order of Oryx's visual tokens (its `simple_mlp_twoview` projector): begin, the
  low-resolution view's token grid row by row with a newline after each row, a separator, the
  native view's the same way, end. `low` / `high` are the views' token grids (rows, cols) after
  compression; tokens are numbered row-major, the low view's first. → (index, kind) int32
  [length]: kind is an ORYX_KINDS index, index the token's number (0 where kind is not token)."""
  index, kind = [0], [4]
  start = 0
  for view, (rows, cols) in enumerate((low, high)):
    if view:
      index.append(0)
      kind.append(3)
    grid = start + np.arange(rows * cols).reshape(rows, cols)
    for row in grid:
      index += [*row.tolist(), 0]
      kind += [1] * cols + [2]
    start += rows * cols
  index.append(0)
  kind.append(5)
  return np.asarray(index, np.int32), np.asarray(kind, np.int32)


def oryx_num_tokens(height: int, width: int, patch: int = 16, ratio: int = 1,
                    multiple: int = 32, low_base: int = 384, max_res: int = 1536) -> int:
  """Visual tokens of one image under Oryx at compression `ratio` (1 for images)."""
  height, width = _oryx_min_side(height, width)
  total = 3
  for base in (low_base, 0):
    h, w, _ = oryx_size(height, width, multiple, base, max_res)
    rows, cols = h // patch // ratio, w // patch // ratio
    total += rows * (cols + 1)
  return total
