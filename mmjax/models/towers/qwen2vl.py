"""Qwen2-VL's tower: the native-resolution ViT on one row of packed patches per example.

Unlike the fixed-size towers it reads `patches`, `patch_positions` and `patch_segments`
(`mmjax.data.patches`) rather than `images`, and the number of visual tokens depends on the
image: the merged tokens of padding come last, and the LLM reads only as many as the row has
placeholders. The merger already maps to the LLM width, so the model's projector is "identity".
"""
import dataclasses

import flax.linen as nn
import numpy as np

from mmjax.data import pipeline
from mmjax.models.native_vit import NativeViT, NativeViTConfig
from mmjax.models.towers import base
from mmjax.shapes import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class Qwen2VLTowerConfig:
  vit: NativeViTConfig = NativeViTConfig()
  max_patches: int = 16384  # Patches per example (static); images are resized to fit.
  min_pixels: int = 56 * 56  # Smallest encoded area (smart_resize's; 2×2 LLM tokens at patch 14).

  def __post_init__(self):
    if self.max_patches % (self.vit.merge_size ** 2):
      raise ValueError(f"max_patches={self.max_patches} is not a multiple of merge_size² = "
                       f"{self.vit.merge_size ** 2}.")

  INPUTS = ("patches", "patch_positions", "patch_segments")

  @property
  def width(self) -> int:
    return self.vit.out_width

  @property
  def max_tokens(self) -> int:
    return self.max_patches // self.vit.merge_size ** 2

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    return np.sum(views["patch_segments"] != 0, axis=1) // self.vit.merge_size ** 2

  def policy(self, aspect: str) -> pipeline.NativeResolution:
    del aspect  # Native resolution keeps the image's aspect.
    return pipeline.NativeResolution(
        patch_size=self.vit.patch_size, merge_size=self.vit.merge_size,
        temporal_patch_size=self.vit.temporal_patch_size, min_pixels=self.min_pixels,
        max_patches=self.max_patches)


class Qwen2VLTower(nn.Module):
  config: Qwen2VLTowerConfig

  @nn.compact
  def __call__(self, patches: Float[Array, "B N F"], patch_positions: Int[Array, "B N 2"],
               patch_segments: Int[Array, "B N"]) -> Float[Array, "B M D"]:
    return NativeViT(self.config.vit, name="vit")(patches, patch_positions,
                                                   patch_segments)["merged"]


def from_config(block, common: dict, llm_width: int) -> Qwen2VLTowerConfig:
  """`c.model.tower`: `vit` (NativeViTConfig fields; its merger maps to the LLM's width),
  `max_patches`, `min_pixels`."""
  return Qwen2VLTowerConfig(vit=NativeViTConfig(**dict(block.vit), out_width=llm_width, **common),
                            max_patches=block.max_patches, min_pixels=block.min_pixels)


base.register("qwen2vl", Qwen2VLTowerConfig, Qwen2VLTower, from_config)
