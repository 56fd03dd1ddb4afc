"""Image processors of Hugging Face checkpoints, read from their `preprocessor_config.json` (or
the `image_processor` block of `processor_config.json`) and computed without transformers: each
step (PIL resize of the uint8 image, rescale in float64, normalise in float32) as transformers'
PIL backend computes it, so the pixels are the same floats. Tests compare them
(`tests/test_hf_processor.py`, `tests/test_qwen2_vl_processor.py`).

`from_config` picks the class by `image_processor_type`; each has `preprocess(images)` giving
transformers' outputs (pixels channels-last, mmjax's layout, where transformers gives them
channels-first).
"""
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmjax.data import patches as patches_lib
from mmjax.data import resolution


def _rescale_normalise(x: np.ndarray, factor: float | None, mean: Sequence[float] | None,
                       std: Sequence[float] | None) -> np.ndarray:
  """transformers' `rescale` (in float64, then float32) and `normalize` (in float32)."""
  if factor is not None:
    x = (x.astype(np.float64) * factor).astype(np.float32)
  x = x.astype(np.float32)
  if mean is not None:
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return x


def _options(cls, config: dict[str, Any]) -> dict[str, Any]:
  """The fields every processor shares: resample, rescale factor, mean and std (None when the
  config turns the step off)."""
  normalise = config.get("do_normalize", True)
  return dict(
      resample=int(config.get("resample", 3)),
      rescale_factor=float(config.get("rescale_factor", 1 / 255))
      if config.get("do_rescale", True) else None,
      mean=tuple(config.get("image_mean", cls.mean)) if normalise else None,
      std=tuple(config.get("image_std", cls.std)) if normalise else None)


@dataclasses.dataclass(frozen=True)
class ClipImageProcessor:
  """transformers' `CLIPImageProcessor`: resize (the shortest edge to `shortest_edge`, or to
  `size` (height, width)) with PIL, centre crop to `crop`, rescale, normalise — each step as
  transformers computes it, so the pixels are the same floats."""
  shortest_edge: int | None = 336
  size: tuple[int, int] | None = None
  crop: tuple[int, int] | None = (336, 336)
  resample: int = 3  # PIL's BICUBIC.
  rescale_factor: float | None = 1 / 255
  mean: tuple[float, ...] | None = (0.48145466, 0.4578275, 0.40821073)
  std: tuple[float, ...] | None = (0.26862954, 0.26130258, 0.27577711)

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "ClipImageProcessor":
    kind = config.get("image_processor_type", "CLIPImageProcessor")
    for flag in ("do_pad", "do_image_splitting"):
      if config.get(flag):
        raise ValueError(f"image processor {flag}=True is not supported by {kind}.")
    size = config.get("size") or {}
    if not config.get("do_resize", True):
      shortest, hw = None, None
    elif "shortest_edge" in size:
      shortest, hw = int(size["shortest_edge"]), None
    elif "height" in size and "width" in size:
      shortest, hw = None, (int(size["height"]), int(size["width"]))
    else:
      raise ValueError(f"image processor size {size!r} is not supported; valid: "
                       "{'shortest_edge': N} or {'height': H, 'width': W}.")
    crop = config.get("crop_size") or {}
    return cls(
        shortest_edge=shortest, size=hw,
        crop=(int(crop["height"]), int(crop["width"])) if config.get("do_center_crop", True)
        else None, **_options(cls, config))

  def preprocess(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 [H, W, 3] RGB images → `pixel_values` float32 [N, h, w, 3]."""
    return {"pixel_values": np.stack([self(np.asarray(image)) for image in images])}

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB → float32 [h, w, 3]."""
    pil = Image.fromarray(np.asarray(image, np.uint8))
    if self.shortest_edge is not None:
      height, width = image.shape[:2]
      short, long = min(height, width), max(height, width)
      new_long = int(self.shortest_edge * long / short)
      pil = pil.resize((self.shortest_edge, new_long) if width <= height
                       else (new_long, self.shortest_edge), self.resample)
    elif self.size is not None:
      pil = pil.resize((self.size[1], self.size[0]), self.resample)
    x = np.asarray(pil)
    if self.crop is not None:
      x = _centre_crop(x, *self.crop)
    return _rescale_normalise(x, self.rescale_factor, self.mean, self.std)


def _centre_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """transformers' `center_crop`: the centre window, zero-padded where the image is smaller."""
  h, w = x.shape[:2]
  top, left = (h - height) // 2, (w - width) // 2
  if top >= 0 and left >= 0:
    return x[top:top + height, left:left + width]
  out = np.zeros((max(height, h), max(width, w)) + x.shape[2:], x.dtype)
  pad_top, pad_left = -(-(out.shape[0] - h) // 2), -(-(out.shape[1] - w) // 2)
  out[pad_top:pad_top + h, pad_left:pad_left + w] = x
  top, left = (out.shape[0] - height) // 2, (out.shape[1] - width) // 2
  return out[top:top + height, left:left + width]


@dataclasses.dataclass(frozen=True)
class Qwen2VLImageProcessor:
  """transformers' `Qwen2VLImageProcessor`: each image resized (PIL) to `smart_resize`'s size
  (sides multiples of patch · merge, area within [min_pixels, max_pixels]), rescaled, normalised
  and cut into patches (`mmjax.data.patches.patchify`, the reference's layout)."""
  min_pixels: int = 56 * 56
  max_pixels: int = 28 * 28 * 1280
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  resample: int = 3  # PIL's BICUBIC.
  rescale_factor: float | None = 1 / 255
  mean: tuple[float, ...] | None = (0.48145466, 0.4578275, 0.40821073)
  std: tuple[float, ...] | None = (0.26862954, 0.26130258, 0.27577711)

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "Qwen2VLImageProcessor":
    if not config.get("do_resize", True):
      raise ValueError("Qwen2-VL image processor do_resize=False is not supported: the sides "
                       "must be multiples of patch · merge.")
    size = config.get("size") or {}
    # transformers 5 writes size {shortest_edge, longest_edge}; older checkpoints give
    # min_pixels / max_pixels at the top (which win, as transformers lets them) or in size.
    low = config.get("min_pixels") or size.get("shortest_edge") or size.get("min_pixels")
    high = config.get("max_pixels") or size.get("longest_edge") or size.get("max_pixels")
    if not low or not high:
      raise ValueError(f"Qwen2-VL image processor size {size!r} gives no pixel range; valid: "
                       "{'shortest_edge': MIN_PIXELS, 'longest_edge': MAX_PIXELS}.")
    return cls(min_pixels=int(low), max_pixels=int(high),
               patch_size=int(config.get("patch_size", 14)),
               temporal_patch_size=int(config.get("temporal_patch_size", 2)),
               merge_size=int(config.get("merge_size", 2)), **_options(cls, config))

  def native(self, image: np.ndarray) -> patches_lib.NativeImage:
    """uint8 [H, W, 3] RGB → its patches [n, 3·T·P·P] and their grid."""
    image = np.asarray(image, np.uint8)
    height, width = resolution.smart_resize(image.shape[0], image.shape[1],
                                            self.patch_size * self.merge_size, self.min_pixels,
                                            self.max_pixels)
    x = np.asarray(Image.fromarray(image).resize((width, height), self.resample))
    x = _rescale_normalise(x, self.rescale_factor, self.mean, self.std)
    return patches_lib.patchify(x, self.patch_size, self.merge_size, self.temporal_patch_size)

  def preprocess(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Images → `pixel_values` float32 [Σn, 3·T·P·P] (their patches, one after another) and
    `image_grid_thw` int64 [N, 3] (1, rows, cols of patches)."""
    natives = [self.native(image) for image in images]
    return {"pixel_values": np.concatenate([n.patches for n in natives]),
            "image_grid_thw": np.array([(1, *n.grid) for n in natives], np.int64)}

  def tokens(self, outputs: dict[str, np.ndarray]) -> list[int]:
    """The LLM tokens of each image: one per merge × merge block of patches."""
    return [int(np.prod(g)) // self.merge_size ** 2 for g in outputs["image_grid_thw"]]


@dataclasses.dataclass(frozen=True)
class LlavaNextImageProcessor:
  """transformers' `LlavaNextImageProcessor` and `LlavaOnevisionImageProcessor` (AnyRes): the
  image resized into its best canvas among `pinpoints` and zero-padded, cut into `crop`-px crops
  after the whole image squashed to one (`resolution.anyres_crops`), each then resized, cropped,
  rescaled and normalised as CLIP's processor does (`each`). OneVision's processor, given several
  images for one prompt (`square_several`), pads each to a square of the mean colour and keeps that
  one view. Images with fewer crops are zero-padded to the most crops of the call."""
  pinpoints: tuple[tuple[int, int], ...]
  crop: int
  each: ClipImageProcessor
  square_several: bool = False

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "LlavaNextImageProcessor":
    kind = str(config.get("image_processor_type", "LlavaNextImageProcessor"))
    pinpoints = config.get("image_grid_pinpoints")
    if not pinpoints:
      raise ValueError(f"{kind} config has no image_grid_pinpoints.")
    if int(config.get("resample", 3)) != 3:
      raise ValueError(f"{kind} resample={config['resample']} is not supported; valid: 3 "
                       "(bicubic, the AnyRes geometry's).")
    # The classes' defaults apply to keys a config leaves out.
    onevision = kind.startswith("LlavaOnevision")
    config = {"size": {"height": 384, "width": 384} if onevision else {"shortest_edge": 224},
              "crop_size": None if onevision else {"height": 224, "width": 224}, **config}
    size, crop = config.get("size") or {}, config.get("crop_size") or {}
    if not isinstance(size, dict) or not isinstance(crop, dict):
      raise ValueError(f"{kind} size {size!r} / crop_size {crop!r} are not supported; valid: "
                       "{'height': H, 'width': W} or {'shortest_edge': N}.")
    base = ((size["height"], size["width"]) if "height" in size and "width" in size
            else (size.get("shortest_edge"),) * 2)
    side = crop.get("height") or size.get("height") or size.get("shortest_edge")
    if base != (side, side):
      raise ValueError(f"{kind} size {size!r} and crop_size {crop!r}: the whole image's view "
                       f"{base} differs from the crops' {side}; mmjax's AnyRes needs them equal.")
    # The crops are resized and cropped as CLIP's processor would (no-ops at the crop size);
    # OneVision's class leaves out the centre crop when its config does not name it.
    crop_default = not onevision
    each = ClipImageProcessor.from_config(
        {**{k: v for k, v in config.items() if k != "do_pad"},
         "do_center_crop": config.get("do_center_crop", crop_default)})
    return cls(pinpoints=tuple(tuple(int(x) for x in p) for p in pinpoints), crop=int(side),
               each=each, square_several=kind.startswith("LlavaOnevision"))

  def views(self, image: np.ndarray, several: bool = False) -> np.ndarray:
    """uint8 [H, W, 3] → float32 [K, crop, crop, 3]: the whole image, then its canvas' crops."""
    image = np.asarray(image, np.uint8)
    if several and self.square_several:
      return self.each(_pad_to_square(image, self.each.mean))[None]
    crops = resolution.anyres_crops(image, self.pinpoints, self.crop)
    return np.stack([self.each(c) for c in crops])

  def preprocess(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Images of one prompt → `pixel_values` float32 [N, K, crop, crop, 3] (zero-padded to the
    most crops) and `image_sizes` int64 [N, 2] (height, width)."""
    views = [self.views(image, several=len(images) > 1) for image in images]
    most = max(len(v) for v in views)
    return {"pixel_values": np.stack([np.pad(v, ((0, most - len(v)),) + ((0, 0),) * 3)
                                      for v in views]),
            "image_sizes": np.array([np.shape(image)[:2] for image in images], np.int64)}


def _pad_to_square(image: np.ndarray, mean: Sequence[float] | None) -> np.ndarray:
  """OneVision's `pad_to_square`: centred on a square of the mean colour (int(m · 255))."""
  h, w = image.shape[:2]
  if h == w:
    return image
  side = max(h, w)
  colour = [int(m * 255) for m in (mean or (0, 0, 0))]
  out = np.empty((side, side, 3), image.dtype)
  out[:] = np.asarray(colour, image.dtype)
  top, left = (side - h) // 2 if h < side else 0, (side - w) // 2 if w < side else 0
  out[top:top + h, left:left + w] = image
  return out


@dataclasses.dataclass(frozen=True)
class InternVLImageProcessor:
  """transformers' `GotOcr2ImageProcessor` as InternVL's processor calls it (`crop_to_patches`):
  the image resized onto the tile grid whose aspect is closest to its own (between `min_patches`
  and `max_patches` tiles, `resolution.internvl_grid`) and cut row-major, then a thumbnail (the
  whole image squashed to one tile) when there is more than one; each tile rescaled and
  normalised."""
  tile: int = 448
  min_patches: int = 1
  max_patches: int = 12
  resample: int = 3  # PIL's BICUBIC.
  rescale_factor: float | None = 1 / 255
  # GotOcr2ImageProcessor's defaults (CLIP's); InternVL's checkpoints give ImageNet's.
  mean: tuple[float, ...] | None = (0.48145466, 0.4578275, 0.40821073)
  std: tuple[float, ...] | None = (0.26862954, 0.26130258, 0.27577711)

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "InternVLImageProcessor":
    size = config.get("size") or {}
    if size.get("height") != size.get("width") or not size.get("height"):
      raise ValueError(f"InternVL image processor size {size!r} is not supported; valid: "
                       "{'height': N, 'width': N}.")
    if not config.get("do_resize", True) or int(config.get("resample", 3)) != 3:
      raise ValueError("InternVL image processor: only bicubic resizing (resample=3) is "
                       "supported.")
    return cls(tile=int(size["height"]), min_patches=int(config.get("min_patches", 1)),
               max_patches=int(config.get("max_patches", 12)), **_options(cls, config))

  def tiles(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] → float32 [n, tile, tile, 3]."""
    tiles = resolution.internvl_tiles(np.asarray(image, np.uint8), self.tile, self.min_patches,
                                      self.max_patches, thumbnail=True)
    return np.stack([_rescale_normalise(t, self.rescale_factor, self.mean, self.std)
                     for t in tiles])

  def preprocess(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Images → `pixel_values` float32 [Σn, tile, tile, 3] (every image's tiles, one after
    another) and `num_patches` int64 [N]."""
    tiles = [self.tiles(image) for image in images]
    return {"pixel_values": np.concatenate(tiles),
            "num_patches": np.array([len(t) for t in tiles], np.int64)}


# image_processor_type (transformers' classes, their PIL and fast variants) → the processor.
_TYPES = {"CLIPImageProcessor": ClipImageProcessor, "Qwen2VLImageProcessor": Qwen2VLImageProcessor,
          "LlavaNextImageProcessor": LlavaNextImageProcessor,
          "LlavaOnevisionImageProcessor": LlavaNextImageProcessor,
          "GotOcr2ImageProcessor": InternVLImageProcessor}
TYPES = tuple(sorted(_TYPES))


def from_config(config: dict[str, Any]):
  """The image processor a preprocessor config describes (`image_processor_type`, default CLIP's)."""
  kind = str(config.get("image_processor_type", "CLIPImageProcessor"))
  base = kind.removesuffix("Fast").removesuffix("Pil")
  if base not in _TYPES:
    raise ValueError(f"image_processor_type {kind!r} is not supported; valid: {list(TYPES)} "
                     "(and their Pil / Fast variants).")
  return _TYPES[base].from_config(config)
