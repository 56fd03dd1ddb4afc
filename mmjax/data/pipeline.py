"""The input pipeline: a TFDS data source → grain → global batches sharded over the mesh.

grain reads records by index with a deterministic shuffle (by seed) and per-process sharding,
decodes and formats them in worker processes, and batches them to static shapes; the host's
batch then becomes global `jax.Array`s split over the mesh's batch axes. The iterator's state
(`get_state` / `set_state`) goes into the checkpoint, so a resumed run sees exactly the examples
an uninterrupted one would.

Formatting turns a record into one row of the MLLM batch (`mmjax.models.mllm`): a conversation —
all of the image's questions (`vqa`), its dense caption (`caption`), or stored LLaVA turns
(`conversation`) — rendered by a chat template, plus the image views a resolution policy makes.
A sample that cannot be used (e.g. too long for `max_len`) becomes an all-padding row with no
loss and is counted in the batch's `dropped` field; truncated ones are counted in `truncated`.
"""
import dataclasses
import json
import math
import signal
from collections.abc import Callable
from typing import Any

import grain
import jax
from absl import flags
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from mmjax import sharding
from mmjax.data import mrope
from mmjax.data import patches as patches_lib
from mmjax.data import resolution
from mmjax.data import tokenizer as tokenizer_lib

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel statistics.
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # InternViT's pixel statistics.
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPECTS = ("pad", "squash")
TASKS = ("vqa", "caption", "conversation")


class ImageRefused(ValueError):
  """A resolution policy cannot encode this image (an aspect ratio beyond its rule or its static
  budget); the pipeline drops the row and counts it in `dropped`, as an unusable conversation."""


@dataclasses.dataclass(frozen=True)
class FixedResolution:
  """The fixed-size policy: square views of the whole image at one or two sizes.

  `aspect="pad"` pads the image to a square first, centred, with the normalisation mean as a
  colour (`int(255 * mean)`), which normalises to zero: LLaVA-1.5's `expand2square` as its
  `process_images` calls it, and transformers' `LlavaImageProcessor(do_pad=True)`. "squash"
  resizes without keeping the aspect ratio. Views are resized from the
  original with antialiasing (PIL bicubic) and normalised with `mean`/`std`.
  """
  sizes: tuple[int, ...] = (336,)  # Side of each view: (low,) or (low, high).
  aspect: str = "pad"
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD

  mrope = False  # Text positions are 1D (NativeResolution's are M-RoPE's).

  def __post_init__(self):
    if self.aspect not in ASPECTS:
      raise ValueError(f"Unknown aspect {self.aspect!r}; valid: {ASPECTS}.")
    if not 1 <= len(self.sizes) <= 2 or min(self.sizes) < 1:
      raise ValueError(f"sizes={self.sizes} must be one or two positive sides (low, high).")

  @property
  def keys(self) -> tuple[str, ...]:
    return ("images", "images_hi")[:len(self.sizes)]

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [H, W, 3] → {"images": float32 [s0, s0, 3], ("images_hi": [s1, s1, 3])}."""
    pil = Image.fromarray(image)
    if self.aspect == "pad":
      side = max(pil.size)
      fill = tuple(int(255 * m) for m in self.mean)
      square = Image.new("RGB", (side, side), fill)
      square.paste(pil, ((side - pil.width) // 2, (side - pil.height) // 2))
      pil = square
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    return {key: ((np.asarray(pil.resize((s, s), Image.BICUBIC), np.float32) / 255.0 - mean)
                  / std).astype(np.float32) for key, s in zip(self.keys, self.sizes)}

  def blank(self) -> dict[str, np.ndarray]:
    return {key: np.zeros((s, s, 3), np.float32) for key, s in zip(self.keys, self.sizes)}

  def num_tokens(self, image: np.ndarray) -> None:
    del image
    return None  # Every image gives the tower's fixed count.


@dataclasses.dataclass(frozen=True)
class NativeResolution:
  """Qwen2-VL's native-resolution policy: the image resized by `smart_resize` (sides multiples of
  patch · merge, area within [min_pixels, max_patches · patch²]) and cut into patches
  (`mmjax.data.patches`), padded to `max_patches` so every row has one static shape.

  Its views: `patches` [max_patches, 3·T·P·P], `patch_positions` [max_patches, 2],
  `patch_segments` [max_patches] (1 on the image's patches, 0 on padding) and `image_grid` [3]
  (t, rows, cols of patches, for the M-RoPE positions). The number of visual tokens depends on the
  image (`num_tokens`), and the text positions are M-RoPE's (`mrope`).
  """
  patch_size: int = 14
  merge_size: int = 2
  temporal_patch_size: int = 2
  min_pixels: int = 56 * 56
  max_patches: int = 16384  # Patch budget of one example (static).
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD

  mrope = True
  keys = ("patches", "patch_positions", "patch_segments", "image_grid")

  def __post_init__(self):
    if self.max_patches % self.merge_size ** 2 or self.max_patches < self.merge_size ** 2:
      raise ValueError(f"max_patches={self.max_patches} must be a positive multiple of "
                       f"merge_size² = {self.merge_size ** 2}.")
    if self.min_pixels > self.max_pixels:
      raise ValueError(f"min_pixels={self.min_pixels} exceeds the max_patches budget of "
                       f"{self.max_pixels} pixels.")

  @property
  def max_pixels(self) -> int:
    return self.max_patches * self.patch_size ** 2

  def _size(self, image: np.ndarray) -> tuple[int, int]:
    """`smart_resize`'s size, or ImageRefused where the rule refuses the image."""
    try:
      return resolution.smart_resize(image.shape[0], image.shape[1],
                                     self.patch_size * self.merge_size, self.min_pixels,
                                     self.max_pixels)
    except ValueError as e:  # Qwen2-VL refuses aspect ratios over 200.
      raise ImageRefused(str(e)) from e

  def num_tokens(self, image: np.ndarray) -> int:
    self._size(image)
    return resolution.qwen2vl_num_tokens(image.shape[0], image.shape[1], self.patch_size,
                                         self.merge_size, self.min_pixels, self.max_pixels)

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    self._size(image)
    native = patches_lib.native_image(image, self.mean, self.std, self.patch_size,
                                      self.merge_size, self.temporal_patch_size,
                                      self.min_pixels, self.max_pixels)
    row = patches_lib.pack([native], self.max_patches)
    return {"patches": row["patches"], "patch_positions": row["positions"],
            "patch_segments": row["segment_ids"],
            "image_grid": np.array([1, *native.grid], np.int32)}

  def blank(self) -> dict[str, np.ndarray]:
    dim = 3 * self.temporal_patch_size * self.patch_size ** 2
    return {"patches": np.zeros((self.max_patches, dim), np.float32),
            "patch_positions": np.zeros((self.max_patches, 2), np.int32),
            "patch_segments": np.zeros((self.max_patches,), np.int32),
            "image_grid": np.zeros((3,), np.int32)}


@dataclasses.dataclass(frozen=True)
class InternVLTiles:
  """InternVL 1.5's dynamic tiling: the image resized (bicubic) onto the tile grid whose aspect
  ratio is closest to its own (`resolution.internvl_grid`) and cut into `tile`-px tiles, plus a
  squashed thumbnail when there is more than one; tiles normalised with `mean` / `std` and padded
  with zeros to `max_tiles`. Views: `tiles` [max_tiles, tile, tile, 3] and `tile_mask`
  [max_tiles] (1 on the image's tiles); an image of n tiles gives n · tokens_per_tile visual
  tokens (`num_tokens`)."""
  tile: int = 448
  min_num: int = 1
  max_num: int = 12
  thumbnail: bool = True
  tokens_per_tile: int = 256
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD

  mrope = False
  keys = ("tiles", "tile_mask")

  @property
  def max_tiles(self) -> int:
    return self.max_num + int(self.thumbnail and self.max_num > 1)

  def num_tokens(self, image: np.ndarray) -> int:
    return resolution.internvl_num_tokens(image.shape[0], image.shape[1], self.tile, self.min_num,
                                          self.max_num, self.tokens_per_tile, self.thumbnail)

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    tiles = resolution.internvl_tiles(image, self.tile, self.min_num, self.max_num,
                                      self.thumbnail)
    out = np.zeros((self.max_tiles, self.tile, self.tile, 3), np.float32)
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    out[:len(tiles)] = (tiles.astype(np.float32) / 255.0 - mean) / std
    return {"tiles": out, "tile_mask": (np.arange(self.max_tiles) < len(tiles)).astype(np.int32)}

  def blank(self) -> dict[str, np.ndarray]:
    return {"tiles": np.zeros((self.max_tiles, self.tile, self.tile, 3), np.float32),
            "tile_mask": np.zeros((self.max_tiles,), np.int32)}


@dataclasses.dataclass(frozen=True)
class AnyResCrops:
  """LLaVA-OneVision's AnyRes: the image resized into the canvas among `candidates` that keeps
  most of it (`resolution.select_best_resolution`), zero-padded, cut into `crop`-px crops, after a
  squashed base image; normalised with `mean` / `std` and padded with zeros to `max_crops_in`.
  The crops' tokens are re-assembled by the tower with a static plan
  (`resolution.onevision_plan`: unpad, bilinear shrink to `anyres_max` crops, newline per row).

  Views: `crops` [max_crops_in, crop, crop, 3], `anyres_index` [budget, 4], `anyres_weight`
  [budget, 4] and `anyres_kind` [budget] (0: padding, 1: feature, 2: newline); an image gives
  grid² + its plan's length visual tokens (`num_tokens`).
  """
  crop: int = 384
  grid: int = 27  # Tokens per crop side (crop / patch).
  candidates: tuple[tuple[int, int], ...] = resolution.ONEVISION_PINPOINTS
  anyres_max: int = 9  # `anyres_max_<n>`: the map is shrunk to about n crops' tokens.
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD

  mrope = False
  keys = ("crops", "anyres_index", "anyres_weight", "anyres_kind")

  def __post_init__(self):
    bad = [c for c in self.candidates if c[0] % self.crop or c[1] % self.crop or min(c) < 1]
    if not self.candidates or bad:
      raise ValueError(f"AnyRes candidates must be positive multiples of crop={self.crop}; "
                       f"got {bad or 'none'}.")

  @property
  def max_crops_in(self) -> int:
    """The base image and the crops of the largest canvas."""
    return 1 + max(h // self.crop * (w // self.crop) for h, w in self.candidates)

  @property
  def budget(self) -> int:
    return resolution.onevision_plan_budget(self.candidates, self.crop, self.grid,
                                            self.anyres_max)

  def num_tokens(self, image: np.ndarray) -> int:
    return self.grid ** 2 + len(resolution.onevision_plan(
        image.shape[0], image.shape[1], self.candidates, self.crop, self.grid,
        self.anyres_max)[2])

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    crops = resolution.anyres_crops(image, self.candidates, self.crop)
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    return self.views((crops.astype(np.float32) / 255.0 - mean) / std, *image.shape[:2])

  def views(self, crops: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Normalised crops [n, crop, crop, 3] (the base image first, as `resolution.anyres_crops`
    orders them) of an image of height × width px → the views: the crops padded, the plan."""
    out = self.blank()
    out["crops"][:len(crops)] = crops
    index, weight, kind = resolution.onevision_plan(height, width, self.candidates, self.crop,
                                                    self.grid, self.anyres_max)
    out["anyres_index"][:len(kind)] = index
    out["anyres_weight"][:len(kind)] = weight
    out["anyres_kind"][:len(kind)] = kind
    return out

  def blank(self) -> dict[str, np.ndarray]:
    return {"crops": np.zeros((self.max_crops_in, self.crop, self.crop, 3), np.float32),
            "anyres_index": np.zeros((self.budget, 4), np.int32),
            "anyres_weight": np.zeros((self.budget, 4), np.float32),
            "anyres_kind": np.zeros((self.budget,), np.int32)}


@dataclasses.dataclass(frozen=True)
class HDCrops:
  """InternLM-XComposer2-4KHD's dynamic patch division: the image resized and white-padded to
  whole `tile`-px tiles, at most `hd_num` of them, keeping its aspect
  (`resolution.xcomposer_hd_image`), normalised with `mean` / `std`; the global view is that
  canvas bicubically resized (torch's, no antialias) to one tile. The tower lays the tokens out
  with a static plan (`resolution.xcomposer_plan`).

  Views: `hd_crops` [1 + hd_num, tile, tile, 3] (global view first, then the tiles row-major,
  zeros after them), `hd_index` [budget] and `hd_kind` [budget] (0: padding, 1: token,
  2: newline, 3: separator); an image gives its plan's length in visual tokens (`num_tokens`).
  """
  tile: int = 336
  hd_num: int = 25
  grid: int = 12  # Tokens per tile side after the 2×2 merge (tile / patch / 2).
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD

  mrope = False
  keys = ("hd_crops", "hd_index", "hd_kind")

  @property
  def budget(self) -> int:
    """The longest plan: hd_num tiles in one column (the most rows, so the most newlines)."""
    return (self.hd_num + 1) * self.grid ** 2 + 1 + (self.hd_num + 1) * self.grid

  def num_tokens(self, image: np.ndarray) -> int:
    return resolution.xcomposer_num_tokens(image.shape[0], image.shape[1], self.hd_num,
                                           self.tile, self.grid)

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    canvas = resolution.xcomposer_hd_image(image, self.hd_num, self.tile)
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    canvas = (canvas.astype(np.float32) / 255.0 - mean) / std
    rows, cols = canvas.shape[0] // self.tile, canvas.shape[1] // self.tile
    glb = (resolution.bicubic_matrix(canvas.shape[0], self.tile) @ canvas.transpose(2, 0, 1)
           @ resolution.bicubic_matrix(canvas.shape[1], self.tile).T).transpose(1, 2, 0)
    out = self.blank()
    out["hd_crops"][0] = glb
    out["hd_crops"][1:1 + rows * cols] = canvas.reshape(
        rows, self.tile, cols, self.tile, 3).swapaxes(1, 2).reshape(-1, self.tile, self.tile, 3)
    index, kind = resolution.xcomposer_plan(rows, cols, self.grid)
    out["hd_index"][:len(kind)] = index
    out["hd_kind"][:len(kind)] = kind
    return out

  def blank(self) -> dict[str, np.ndarray]:
    return {"hd_crops": np.zeros((1 + self.hd_num, self.tile, self.tile, 3), np.float32),
            "hd_index": np.zeros((self.budget,), np.int32),
            "hd_kind": np.zeros((self.budget,), np.int32)}


@dataclasses.dataclass(frozen=True)
class OryxViews:
  """Oryx's two views of an image (`resolution.oryx_views`): a low-resolution one of about
  low_base² pixels and the native one (larger images shrunk to max_res²), both with sides in
  multiples of `multiple`, cut into patch × patch patches and packed into one row (low view
  first), each region of ratio × ratio patches contiguous so the compressor pools it in place.
  Pixels are normalised with SigLIP's mean / std (0.5).

  Views: `patches` [max_patches, 3·P·P] (channel, row, column within a patch), `patch_segments`
  [max_patches] (1: low view, 2: native view, 0: padding), `pos_index` / `pos_weight`
  [max_patches, 4] (each patch's bilinear taps into the table × table position table,
  `resolution.oryx_position_plan`), and the token layout `oryx_index` / `oryx_kind` [budget]
  (`resolution.oryx_layout`). Static sizes hold for aspect ratios up to `max_aspect`; a longer
  image is refused.
  """
  patch: int = 16
  ratio: int = 1  # Compression per side: 1 for images (Oryx), 2 / 4 for its video modes.
  multiple: int = 32  # Sides are multiples of this (patch · max(2, ratio)).
  low_base: int = 384
  max_res: int = 1536
  table: int = 128  # Side of the learned position table (SigLIP at 2048 px / 16).
  max_aspect: float = 3.0
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)

  mrope = False
  keys = ("patches", "patch_segments", "pos_index", "pos_weight", "oryx_index", "oryx_kind")

  def __post_init__(self):
    if self.multiple % (self.patch * self.ratio):
      raise ValueError(f"multiple={self.multiple} must be a multiple of patch · ratio = "
                       f"{self.patch * self.ratio} so every view pools into whole regions.")
    if self.max_aspect < 1:
      raise ValueError(f"max_aspect={self.max_aspect} must be at least 1.")

  def _bounds(self) -> tuple[int, int]:
    """Upper bounds on (patches, rows of patches) of both views together, for images whose
    aspect ratio is at most max_aspect (see oryx_size: floors keep the low view within
    low_base², padding adds under one multiple per side to the native view)."""
    root, m, p = math.sqrt(self.max_aspect * 1.01), self.multiple, self.patch
    low_side = max(self.low_base * root, m)
    low = max(self.low_base ** 2, m * low_side) / p ** 2
    r = self.max_res
    high = max(r * r, m * (r * root + m),
               (r * r / m ** 2 + r * (root + 1 / root) / m + 1) * m * m) / p ** 2
    rows = (low_side + r * root + m) / p
    return int(low + high), int(rows) + 2

  @property
  def max_patches(self) -> int:
    group = self.ratio ** 2
    return -(-self._bounds()[0] // group) * group

  @property
  def budget(self) -> int:
    patches, rows = self._bounds()
    return patches // self.ratio ** 2 + rows // self.ratio + 2 + 3

  def _check(self, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    if max(h, w) / min(h, w) > self.max_aspect:
      raise ImageRefused(f"Image of {h}x{w} has an aspect ratio over max_aspect="
                       f"{self.max_aspect}; the Oryx policy's static budget assumes at most "
                       "that (raise model.tower.max_aspect).")

  def num_tokens(self, image: np.ndarray) -> int:
    self._check(image)
    return resolution.oryx_num_tokens(image.shape[0], image.shape[1], self.patch, self.ratio,
                                      self.multiple, self.low_base, self.max_res)

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    self._check(image)
    mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
    out = self.blank()
    start, grids = 0, []
    for view, pixels in enumerate(resolution.oryx_views(image, self.multiple, self.low_base,
                                                        self.max_res)):
      pixels = (pixels.astype(np.float32) / 255.0 - mean) / std
      native = patches_lib.patchify(pixels, self.patch, self.ratio, temporal_patch_size=1)
      rows, cols = native.grid
      end = start + native.num_tokens
      index, weight = resolution.oryx_position_plan(rows, cols, self.table)
      flat = native.positions[:, 0] * cols + native.positions[:, 1]  # Region order → row-major.
      out["patches"][start:end] = native.patches
      out["patch_segments"][start:end] = view + 1
      out["pos_index"][start:end], out["pos_weight"][start:end] = index[flat], weight[flat]
      grids.append((rows // self.ratio, cols // self.ratio))
      start = end
    index, kind = resolution.oryx_layout(*grids)
    out["oryx_index"][:len(kind)], out["oryx_kind"][:len(kind)] = index, kind
    return out

  def blank(self) -> dict[str, np.ndarray]:
    n, budget = self.max_patches, self.budget
    return {"patches": np.zeros((n, 3 * self.patch ** 2), np.float32),
            "patch_segments": np.zeros((n,), np.int32),
            "pos_index": np.zeros((n, 4), np.int32),
            "pos_weight": np.zeros((n, 4), np.float32),
            "oryx_index": np.zeros((budget,), np.int32),
            "oryx_kind": np.zeros((budget,), np.int32)}


def image_tokens(policy: Any, image: np.ndarray, fixed: int) -> int:
  """Visual tokens of `image` under `policy`: its own count for a policy whose count depends on
  the image (native resolution, tiles, crops), else the tower's `fixed` count."""
  count = policy.num_tokens(image)
  return fixed if count is None else count


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def conversation_of(record: dict[str, Any], task: str, rng: np.random.Generator,
                    max_questions: int | None = None, kinds: tuple[str, ...] = ()
                    ) -> list[dict[str, str]]:
  """The LLaVA-format conversation a record is trained on under `task` (vqa: at most
  `max_questions` of its questions, in random order, of the `kinds` given; () = every kind)."""
  if task == "caption":
    return [{"from": "human", "value": tokenizer_lib.IMAGE_TAG},
            {"from": "gpt", "value": _text(record["caption"])}]
  if task == "vqa":
    qa = record["qa"]
    order = [i for i in rng.permutation(len(qa["question"]))
             if not kinds or _text(qa["kind"][i]) in kinds][:max_questions]
    turns = []
    for n, i in enumerate(order):
      prefix = tokenizer_lib.IMAGE_TAG + "\n" if n == 0 else ""
      turns += [{"from": "human", "value": prefix + _text(qa["question"][i])},
                {"from": "gpt", "value": _text(qa["answer"][i])}]
    return turns
  if task == "conversation":
    return json.loads(_text(record["conversations"]))
  raise ValueError(f"Unknown task {task!r}; valid: {TASKS}.")


class FormatExample(grain.transforms.RandomMap):
  """A record → one row of the model's batch (numpy arrays of static shapes)."""

  def __init__(self, *, task: str, template: str, tokenizer: tokenizer_lib.Tokenizer,
               num_image_tokens: int, max_len: int, policy: Callable[[np.ndarray], dict],
               max_questions: int | None = None, kinds: tuple[str, ...] = (),
               visual_tokens: Callable[[int], int] | None = None, max_images: int = 1):
    """`num_image_tokens`: the placeholders of the largest image; `visual_tokens` maps the
    tower's tokens of an image to the decoder's (the connector's count; None: the same);
    `max_images`: the images a row holds (1: views without an image axis; N > 1: views
    [N, …] and `image_tokens` [N], as `MLLMConfig.max_images`; a record of more is dropped)."""
    if task not in TASKS:
      raise ValueError(f"Unknown task {task!r}; valid: {TASKS}.")
    if max_images < 1:
      raise ValueError(f"max_images={max_images} must be at least 1.")
    tokenizer_lib.get_template(template)
    self.task, self.template, self.tokenizer = task, template, tokenizer
    self.num_image_tokens, self.max_len, self.policy = num_image_tokens, max_len, policy
    self.max_questions, self.kinds = max_questions, tuple(kinds)
    self.visual_tokens, self.max_images = visual_tokens, max_images

  def _tokens(self, image: np.ndarray) -> int:
    """The decoder's visual tokens of `image`: its own count under a dynamic policy, else the
    largest image's."""
    count = self.policy.num_tokens(image)
    if count is None:
      return self.num_image_tokens
    return self.visual_tokens(count) if self.visual_tokens is not None else count

  def _views(self, views: list[dict[str, np.ndarray]], tokens: list[int]
             ) -> dict[str, np.ndarray]:
    """The row's views: the one image's (or blank) with one image a row; else every image's
    stacked with blanks to `max_images`, and their `image_tokens`."""
    if self.max_images == 1:
      return views[0] if views else self.policy.blank()
    blank = self.policy.blank()
    views = views + [blank] * (self.max_images - len(views))
    out = {k: np.stack([v[k] for v in views]) for k in blank}
    out["image_tokens"] = np.asarray(tokens + [0] * (self.max_images - len(tokens)), np.int32)
    return out

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    has_image = bool(record.get("has_image", True))
    pictures = ([record["image"]] + list(record.get("extra_images", ()))) if has_image else []
    row = {"dropped": np.array(0, np.int32), "truncated": np.array(0, np.int32),
           "has_image": np.array(has_image, np.int32),
           # Rows of more images than the row holds are dropped and counted, never cut.
           "too_many_images": np.array(len(pictures) > self.max_images, np.int32)}
    views, grids = [], []
    try:
      if len(pictures) > self.max_images:
        raise tokenizer_lib.ConversationError(
            "too_many_images", f"{len(pictures)} images, the row holds {self.max_images}")
      views = [self.policy(picture) for picture in pictures]
      tokens = [self._tokens(picture) for picture in pictures]
      encoded = tokenizer_lib.encode_conversation(
          self.template, conversation_of(record, self.task, rng, self.max_questions, self.kinds),
          self.tokenizer, num_images=len(pictures), num_image_tokens=tokens,
          max_len=self.max_len, max_images=self.max_images)
      ids, mask = encoded.ids, encoded.loss_mask
      row["truncated"] = np.array(encoded.truncated, np.int32)
      grids = [view["image_grid"] for view in views] if self.policy.mrope else []
    except (tokenizer_lib.ConversationError, ImageRefused):
      ids, mask, views, tokens = np.zeros(0, np.int32), np.zeros(0, np.int32), [], []
      row["dropped"] = np.array(1, np.int32)
    row.update(tokenizer_lib.model_inputs(ids, mask, self.max_len, pad_id=self.tokenizer.pad_id,
                                          image_id=self.tokenizer.image_id))
    row.update(self._views(views, tokens))
    if self.policy.mrope:
      row["positions"] = mrope_row(ids, self.max_len, self.tokenizer.image_id, grids,
                                   self.policy.merge_size)
    return row


def mrope_row(ids: np.ndarray, length: int, image_id: int, grids: Any,
              merge: int) -> np.ndarray:
  """M-RoPE positions int32 [length, 3] of one row (batch axis first, so the pipeline can shard
  it; the model moves the axis): each image's placeholders take its grid's rows and columns (the
  grids of the row's images in order, or one grid), padding 0."""
  types = (np.asarray(ids) == image_id).astype(np.int32)
  grids = np.asarray(grids).reshape(-1, 3)
  grids = [tuple(int(g) for g in grid) for grid in grids] if types.any() else []
  positions, _ = mrope.mrope_positions(types.tolist(), grids, merge)
  out = np.zeros((length, 3), np.int32)
  out[:positions.shape[1]] = positions.T
  return out


def make_loader(source, transform: grain.transforms.RandomMap, *, global_batch_size: int,
                seed: int, shuffle: bool = True, num_epochs: int | None = None,
                worker_count: int = 0) -> grain.IterDataset:
  """A grain dataset yielding this process's rows of each global batch, as numpy dicts.

  Every process walks the same global order (shuffled per epoch by `seed`) and process p keeps
  rows [p·b, (p+1)·b) of each global batch (b = global_batch_size / processes), decoding only
  those. So the global batches, and a resumed run, are the same whatever the number of processes
  and workers. The last partial batch is dropped so every batch has the same static shape.
  Iterate with `iter(...)`; the iterator's `get_state` / `set_state` resume it.
  """
  processes, index = jax.process_count(), jax.process_index()
  if global_batch_size < processes or global_batch_size % processes:
    raise ValueError(f"global_batch_size={global_batch_size} is not a positive multiple of the "
                     f"{processes} processes.")
  if worker_count and not flags.FLAGS.is_parsed():
    # grain's workers read absl flags; a library caller (not train.py) has not parsed any.
    flags.FLAGS.mark_as_parsed()
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).random_map(transform, seed=seed)
  ds = ds.batch(global_batch_size // processes, drop_remainder=True)
  if num_epochs is not None:  # Every process must get the same number of batches.
    ds = ds.slice(slice(0, len(ds) // processes * processes))
  # A bounded read-ahead (two batches): grain's default of 500 elements decodes hundreds of
  # images up front, starving the train step of CPU for its first minutes.
  ds = ds.slice(slice(index, None, processes)).to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  if worker_count:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                        worker_init_fn=_leave_sigterm_to_the_trainer)
  return ds


def _leave_sigterm_to_the_trainer(worker_index: int, worker_count: int) -> None:
  """A scheduler's preemption SIGTERM reaches the whole process group; a worker that died of it
  failed the trainer's next batch before the trainer could write its checkpoint (seen on a GPU
  machine). The workers ignore it and end when their iterator closes, as on any other exit."""
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows → global arrays whose leading axis is split over the batch axes."""
  spec = sharding.data_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(spec, np.asarray(v))
          for k, v in batch.items()}
