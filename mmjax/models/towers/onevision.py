"""LLaVA-OneVision's (and LLaVA-NeXT's) tower: AnyRes crops through one ViT, projected,
re-assembled into one map.

The data pipeline (`pipeline.AnyResCrops`) gives the base image and the crops of the canvas that
fits the image best, padded to a static number, and a static gather plan
(`resolution.onevision_plan`) saying how the crops' tokens become the map tokens: laid out as one
map, unpadded, bilinearly shrunk to the `anyres_max` budget, a learned newline token after every
row. As in the reference (`LlavaOnevisionModel.get_image_features`), the projector runs on every
crop token before the map is resampled, so it lives in this tower (the model's projector is
`identity`), and the newline token has the LLM's width. Output: the base image's grid² tokens,
then the plan's tokens (padding after them); the LLM reads as many as the row has placeholders.
LLaVA-NeXT is the same tower with its own canvases (`pinpoints`), a CLIP ViT whose class token is
dropped, and no shrinking (`anyres_max` 0).
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.data import pipeline
from mmjax.models import connectors
from mmjax.models import layers
from mmjax.models import vit as vit_lib
from mmjax.models.towers import base
from mmjax.models.vit import ViT, ViTConfig, check_select_layer
from mmjax.shapes import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class OneVisionTowerConfig:
  # SigLIP's grid: its 384-px crops with patch 14 read 378 px (27 × 27 patches, no class token).
  vit: ViTConfig = ViTConfig(image_size=378, patch_size=14, use_cls=False)
  select_layer: int = -1  # OneVision feeds SigLIP's last layer ("full": no class token to drop).
  projector: str = "mlp2x_gelu"  # Runs per crop token, before the map is resampled.
  out_width: int = 4096  # The LLM's width (projector output and newline token).
  max_crops_in: int = 37  # The base image + the crops of the largest canvas (6 × 6).
  budget: int = 8 * 729  # Plan tokens after the base image (`pipeline.AnyResCrops.budget`).
  anyres_grid: int = 6  # Canvases of 1…anyres_grid crops a side (OneVision: 6).
  anyres_max: int = 9  # The map is shrunk to about this many crops' tokens (`anyres_max_9`);
  # 0: never shrunk (LLaVA-NeXT).
  # The canvases (height, width) in px, multiples of the crop (LLaVA-NeXT's and a checkpoint's
  # `image_grid_pinpoints`); () = every r × c crops for r, c in 1…anyres_grid (OneVision's).
  pinpoints: tuple[tuple[int, int], ...] = ()
  # The crops' side in px; 0: the ViT's image_size. A Hugging Face SigLIP of 384 px at patch 14
  # reads 27 patches of a 384-px crop and ignores its last 6 px: crop 384, vit.image_size 378.
  crop: int = 0

  INPUTS = ("crops", "anyres_index", "anyres_weight", "anyres_kind")

  def __post_init__(self):
    check_select_layer(self.vit, self.select_layer)
    if self.crop and not 0 <= self.crop - self.vit.image_size < self.vit.patch_size:
      raise ValueError(f"crop={self.crop} px must hold the ViT's {self.vit.image_size} px and "
                       f"less than a patch ({self.vit.patch_size}) more.")
    connectors.validate_projector(self.projector)
    if self.projector == "identity" and self.vit.width != self.out_width:
      raise ValueError(f"An identity projector needs vit.width ({self.vit.width}) equal to "
                       f"out_width ({self.out_width}).")

  @property
  def grid(self) -> int:
    return self.vit.grid

  @property
  def crop_size(self) -> int:
    return self.crop or self.vit.image_size

  @property
  def width(self) -> int:
    return self.out_width

  @property
  def max_tokens(self) -> int:
    return self.grid ** 2 + self.budget

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    return self.grid ** 2 + np.sum(views["anyres_kind"] != 0, axis=1)

  def policy(self, aspect: str) -> pipeline.AnyResCrops:
    del aspect  # The canvas is chosen by the image's aspect.
    return anyres_crops(self.crop_size, self.vit.patch_size, self.anyres_grid, self.anyres_max,
                        self.pinpoints)


class OneVisionTower(nn.Module):
  config: OneVisionTowerConfig

  @nn.compact
  def __call__(self, crops: Float[Array, "B K R R 3"], index: Int[Array, "B P 4"],
               weight: Float[Array, "B P 4"], kind: Int[Array, "B P"]) -> Float[Array, "B N D"]:
    """Padded crops (base first) and the plan → [B, grid² + P, out_width]."""
    cfg = self.config
    b, k = crops.shape[:2]
    side = cfg.vit.image_size  # The pixels the patch convolution reads of each crop.
    crops = crops[:, :, :side, :side]
    hidden = ViT(cfg.vit, name="vit").hidden_states(crops.reshape(b * k, *crops.shape[2:]))
    x = hidden[cfg.select_layer][:, cfg.vit.prefix_tokens:]
    x = connectors.Projector(cfg.projector, cfg.out_width, dtype=cfg.vit.dtype,
                             param_dtype=cfg.vit.param_dtype, name="projector")(x)
    x = x.reshape(b, k * cfg.grid ** 2, cfg.out_width)
    newline = self.param("image_newline", layers.partitioned(nn.initializers.normal(
        cfg.out_width ** -0.5), ("embed",)), (cfg.out_width,), cfg.vit.param_dtype)
    gathered = jnp.take_along_axis(x, index.reshape(b, -1, 1), axis=1).reshape(
        *index.shape, cfg.out_width)
    mapped = jnp.einsum("bpk,bpkd->bpd", weight.astype(x.dtype), gathered)
    mapped = jnp.where((kind == 2)[..., None], newline.astype(x.dtype), mapped)
    mapped = jnp.where((kind == 0)[..., None], 0.0, mapped)
    out = jnp.concatenate([x[:, :cfg.grid ** 2], mapped], axis=1)
    return layers.constrain(out, ("batch", "length", "embed"))


def anyres_crops(crop: int, patch: int, anyres_grid: int, anyres_max: int,
                 pinpoints: tuple[tuple[int, int], ...] = ()) -> pipeline.AnyResCrops:
  """The AnyRes policy: the canvases `pinpoints`, or (OneVision's) 1…anyres_grid crops of `crop`
  px a side."""
  candidates = tuple(tuple(p) for p in pinpoints) or tuple(
      (crop * r, crop * c) for r in range(1, anyres_grid + 1) for c in range(1, anyres_grid + 1))
  return pipeline.AnyResCrops(crop=crop, grid=crop // patch, candidates=candidates,
                              anyres_max=anyres_max)


def from_config(block, common: dict, llm_width: int) -> OneVisionTowerConfig:
  """`c.model.tower`: `vit` (ViTConfig fields; its image_size is the crop side),
  `select_layer`, `projector` (per crop token), `anyres_grid`, `anyres_max`."""
  vit = vit_lib.from_block(block.vit, common)
  crops = anyres_crops(vit.image_size, vit.patch_size, block.anyres_grid, block.anyres_max)
  return OneVisionTowerConfig(
      vit=vit, select_layer=block.select_layer, projector=block.projector, out_width=llm_width,
      max_crops_in=crops.max_crops_in, budget=crops.budget, anyres_grid=block.anyres_grid,
      anyres_max=block.anyres_max)


base.register("onevision", OneVisionTowerConfig, OneVisionTower, from_config)
