"""Qwen2-VL's tower: the native-resolution ViT on one row of packed patches per example.

Unlike the fixed-size towers it reads `patches`, `patch_positions` and `patch_segments`
(`mmjax.data.patches`) rather than `images`, and the number of visual tokens depends on the
image: the merged tokens of padding come last, and the LLM reads only as many as the row has
placeholders. The merger already maps to the LLM width, so the model's projector is "identity".
"""
import dataclasses

import flax.linen as nn
from jaxtyping import Array, Float, Int

from mmjax.models.native_vit import NativeViT, NativeViTConfig


@dataclasses.dataclass(frozen=True)
class Qwen2VLTowerConfig:
  vit: NativeViTConfig = NativeViTConfig()
  max_patches: int = 16384  # Patches per example (static); images are resized to fit.

  def __post_init__(self):
    if self.max_patches % (self.vit.merge_size ** 2):
      raise ValueError(f"max_patches={self.max_patches} is not a multiple of merge_size² = "
                       f"{self.vit.merge_size ** 2}.")

  INPUTS = ("patches", "patch_positions", "patch_segments")

  @property
  def width(self) -> int:
    return self.vit.out_width



class Qwen2VLTower(nn.Module):
  config: Qwen2VLTowerConfig

  @nn.compact
  def __call__(self, patches: Float[Array, "B N K"], patch_positions: Int[Array, "B N 2"],
               patch_segments: Int[Array, "B N"]) -> Float[Array, "B M D"]:
    return NativeViT(self.config.vit, name="vit")(patches, patch_positions,
                                                   patch_segments)["merged"]
