"""LLaVA-1.5's tower: one ViT, features of `select_layer`, class token dropped."""
import dataclasses

import flax.linen as nn

from mmjax.models import vit as vit_lib
from mmjax.models.towers import base
from mmjax.models.vit import ViT, ViTConfig, check_select_layer
from mmjax.shapes import Array, Float

FEATURE_SELECTS = ("patch", "cls_patch")


@dataclasses.dataclass(frozen=True)
class ViTTowerConfig(base.OneSquareView):
  vit: ViTConfig = ViTConfig(image_size=336)  # CLIP ViT-L/14-336 by default.
  select_layer: int = -2  # Index into the hidden states; LLaVA takes the penultimate layer.
  select_feature: str = "patch"  # "patch" drops the class token (LLaVA), "cls_patch" keeps it.

  def __post_init__(self):
    if self.select_feature not in FEATURE_SELECTS:
      raise ValueError(f"Unknown select_feature {self.select_feature!r}; valid: {FEATURE_SELECTS}.")
    check_select_layer(self.vit, self.select_layer)

  @property
  def image_size(self) -> int:
    return self.vit.image_size

  @property
  def width(self) -> int:
    return self.vit.width

  def num_tokens(self, height: int, width: int) -> int:
    p = self.vit.patch_size
    keep_cls = self.select_feature == "cls_patch" and self.vit.prefix_tokens
    return (height // p) * (width // p) + int(keep_cls)


class ViTTower(nn.Module):
  config: ViTTowerConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B N C"]:
    cfg = self.config
    hidden = ViT(cfg.vit, name="vit").hidden_states(images)[cfg.select_layer]
    if cfg.select_feature == "patch" and cfg.vit.prefix_tokens:
      hidden = hidden[:, 1:]
    return hidden


def from_config(block, common: dict, llm_width: int) -> ViTTowerConfig:
  """`c.model.tower`: `vit` (ViTConfig fields) and `select_layer`."""
  del llm_width
  return ViTTowerConfig(vit_lib.from_block(block.vit, common), select_layer=block.select_layer)


base.register("vit", ViTTowerConfig, ViTTower, from_config)
