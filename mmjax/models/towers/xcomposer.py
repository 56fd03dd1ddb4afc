"""InternLM-XComposer2-4KHD's tower: a global view and the HD canvas' tiles through one ViT, each
tile's grid merged 2×2, laid out with learned newline and separator tokens.

The data pipeline (`pipeline.HDCrops`) resizes and pads the image to whole tiles (at most
`hd_num`), adds the global view and a static layout plan (`resolution.xcomposer_plan`): the
global view's token grid with a newline after every row, the separator, then the tiles' tokens
as one map with a newline after every row. As in the authors' vision tower, the newline
(`sub_GN`) and separator (`glb_GN`) tokens live in the merged feature space, before the model's
projector (`vision_proj`, an MLP). Output: the plan's tokens, padding after them.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.data import pipeline
from mmjax.models import layers
from mmjax.models import vit as vit_lib
from mmjax.models.pixel_unshuffle import pixel_unshuffle
from mmjax.models.towers import base
from mmjax.models.vit import ViT, ViTConfig, check_select_layer
from mmjax.shapes import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class XComposerTowerConfig:
  vit: ViTConfig = ViTConfig(image_size=336, patch_size=14)  # CLIP ViT-L/14-336.
  select_layer: int = -1  # The authors' `vision_select_layer` for 4KHD.
  hd_num: int = 25  # Most tiles of the HD canvas.
  budget: int = 26 * 144 + 1 + 26 * 12  # Plan length (`pipeline.HDCrops.budget`).

  INPUTS = ("hd_crops", "hd_index", "hd_kind")

  def __post_init__(self):
    if self.vit.grid % 2:
      raise ValueError(f"XComposer tiles of {self.vit.image_size} px give a {self.vit.grid}-patch "
                       "grid; the 2×2 merge needs it even.")
    if self.hd_num < 1:
      raise ValueError(f"hd_num={self.hd_num} must be at least 1.")
    check_select_layer(self.vit, self.select_layer)

  @property
  def grid(self) -> int:
    return self.vit.grid // 2

  @property
  def width(self) -> int:
    return 4 * self.vit.width

  @property
  def max_tokens(self) -> int:
    return self.budget

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    return np.sum(views["hd_kind"] != 0, axis=1)

  def policy(self, aspect: str) -> pipeline.HDCrops:
    del aspect  # The HD canvas keeps the image's aspect.
    return pipeline.HDCrops(tile=self.vit.image_size, hd_num=self.hd_num, grid=self.grid)


class XComposerTower(nn.Module):
  config: XComposerTowerConfig

  @nn.compact
  def __call__(self, crops: Float[Array, "B K R R 3"], index: Int[Array, "B P"],
               kind: Int[Array, "B P"]) -> Float[Array, "B P C"]:
    """Global view + padded tiles (K = 1 + hd_num) and the plan → [B, budget, 4 · vit.width]."""
    cfg = self.config
    b, k = crops.shape[:2]
    hidden = ViT(cfg.vit, name="vit").hidden_states(crops.reshape(b * k, *crops.shape[2:]))
    x = hidden[cfg.select_layer][:, cfg.vit.prefix_tokens:]
    g = cfg.vit.grid
    x = pixel_unshuffle(x.reshape(b * k, g, g, -1), 2).reshape(b, k * cfg.grid ** 2, cfg.width)
    init = layers.partitioned(nn.initializers.zeros, ("vision_embed",))
    newline = self.param("sub_GN", init, (cfg.width,), cfg.vit.param_dtype)
    separator = self.param("glb_GN", init, (cfg.width,), cfg.vit.param_dtype)
    out = jnp.take_along_axis(x, index[..., None], axis=1)
    out = jnp.where((kind == 2)[..., None], newline.astype(x.dtype), out)
    out = jnp.where((kind == 3)[..., None], separator.astype(x.dtype), out)
    out = jnp.where((kind == 0)[..., None], 0.0, out)
    return layers.constrain(out, ("batch", "length", "vision_embed"))


def from_config(block, common: dict, llm_width: int) -> XComposerTowerConfig:
  """`c.model.tower`: `vit` (ViTConfig fields; its image_size is the tile side),
  `select_layer`, `hd_num`; the plan's budget follows from them."""
  del llm_width
  vit = vit_lib.from_block(block.vit, common)
  budget = pipeline.HDCrops(tile=vit.image_size, hd_num=block.hd_num, grid=vit.grid // 2).budget
  return XComposerTowerConfig(vit=vit, select_layer=block.select_layer, hd_num=block.hd_num,
                              budget=budget)


base.register("xcomposer", XComposerTowerConfig, XComposerTower, from_config)
