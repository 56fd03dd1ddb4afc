"""LLaVA-HR's tower (METHODS §2.1): a high-resolution ConvNeXt injects its last-stage map into a
low-resolution ViT through MR-adapters between ViT blocks; the tokens into the LLM are the ViT's.

  image [S] ──ConvNeXt──────────────────────────── G (last stage) ──────┐
     └─bilinear→ [vit_side] ─ViT blocks─ MR(·, G) ─ … ─ F ─ Linear(F) + Linear(align(G))

Exact to the authors' `MultiPathCLIPVisionTower.forward` (luogen1996/LLaVA-HR @1212ffb,
`llava_hr/model/multimodal_encoder/multipath_encoder_wapper.py`; tests/test_tower_references.py):
the ViT's input is the high-resolution image resized bilinearly with align_corners=True; the
class token is dropped right after the CLIP embeddings, before `pre_layrnorm` and every block;
the position table is resampled with torch's antialiased bicubic (their patched CLIP
embeddings) when the ViT's input is larger than the table; every block runs and no post-norm
follows; the final features are `Linear(F) + Linear(align(G))` on the raw last-stage map.
"""
import dataclasses

import flax.linen as nn

from mmjax.models import convnext as convnext_lib
from mmjax.models import layers
from mmjax.models import mr_adapter
from mmjax.models import vit as vit_lib
from mmjax.models.towers import base
from mmjax.models.towers import encoders
from mmjax.shapes import Array, Float


@dataclasses.dataclass(frozen=True)
class LLaVAHRTowerConfig(base.OneSquareView):
  # Low-res branch (CLIP ViT-L/14); vit.image_size is its position table's side.
  vit: vit_lib.ViTConfig = vit_lib.ViTConfig(image_size=448)
  convnext: convnext_lib.ConvNeXtConfig = convnext_lib.ConvNeXtConfig()  # High-res branch.
  image_size: int = 1024  # The tower's input side S (the ConvNeXt's).
  # The ViT's input side; 0: vit.image_size. The authors use max(S / 32 · 14, 336) with CLIP-336's
  # table (vit.image_size=336) resampled to it: 448 for S = 1024 (configs/default.py, size=7b).
  vit_input: int = 0
  adapter: mr_adapter.MRAdapterConfig = mr_adapter.MRAdapterConfig()
  adapter_after: tuple[int, ...] = ()  # ViT blocks (1-based) followed by an adapter; () → the
  # authors' placement, after blocks depth/4 · {1, 2, 3}.

  def __post_init__(self):
    after = self.adapter_positions
    if list(after) != sorted(set(after)) or not all(0 < a < self.vit.depth for a in after):
      raise ValueError(f"adapter_after={after} must be increasing block numbers in "
                       f"[1, {self.vit.depth - 1}] (an adapter after the last block would feed "
                       "nothing).")
    if self.vit.layer_groups:
      raise ValueError("LLaVA-HR sets the ViT's layer_groups from adapter_after; leave them "
                       "empty.")
    if not self.vit.use_cls or self.vit.position_embedding != "learned":
      raise ValueError("LLaVA-HR's ViT is a CLIP: it needs use_cls=True and learned positions.")
    if self.vit_side % self.vit.patch_size:
      raise ValueError(f"vit_input={self.vit_side} is not a multiple of the ViT's "
                       f"patch_size={self.vit.patch_size}.")
    if self.image_size % 32 or self.image_size < self.vit_side:
      raise ValueError(f"image_size={self.image_size} must be a multiple of 32 (the ConvNeXt "
                       f"stride) and at least the ViT's input side {self.vit_side}.")
    mr_adapter.check_alignment(self.high_grid, self.low_grid)

  @property
  def adapter_positions(self) -> tuple[int, ...]:
    if self.adapter_after:
      return tuple(self.adapter_after)
    return tuple(self.vit.depth // 4 * i for i in (1, 2, 3) if self.vit.depth // 4 * i > 0)

  @property
  def vit_side(self) -> int:
    return self.vit_input or self.vit.image_size

  @property
  def tower_vit(self) -> vit_lib.ViTConfig:
    """The authors' CLIP: split into block groups at the adapters, the class token dropped
    before the blocks, the position table resampled with antialiasing."""
    edges = (0,) + self.adapter_positions + (self.vit.depth,)
    return dataclasses.replace(vit_lib.hr_clip(self.vit),
                               layer_groups=tuple(b - a for a, b in zip(edges, edges[1:])))

  @property
  def high_grid(self) -> int:
    return self.image_size // 32

  @property
  def low_grid(self) -> int:
    return self.vit_side // self.vit.patch_size

  @property
  def width(self) -> int:
    return self.vit.width

  def num_tokens(self, height: int, width: int) -> int:
    del height, width  # The ViT always sees vit_side.
    return self.low_grid ** 2


class LLaVAHRTower(nn.Module):
  config: LLaVAHRTowerConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B R R 3"]) -> Float[Array, "B N D"]:
    cfg = self.config
    if images.shape[1:3] != (cfg.image_size, cfg.image_size):
      raise ValueError(f"LLaVA-HR expects {cfg.image_size}x{cfg.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    vit_cfg = cfg.tower_vit
    kw = dict(dtype=vit_cfg.dtype, param_dtype=vit_cfg.param_dtype)
    high = convnext_lib.ConvNeXt(cfg.convnext, name="convnext")(images)[-1]
    vit = vit_lib.ViT(vit_cfg, name="vit")
    x = vit.embed(encoders.resize_images(images, cfg.vit_side, align_corners=True))
    grid = (cfg.low_grid, cfg.low_grid)
    for g in range(len(vit_cfg.groups)):
      x, _ = vit.run_group(x, g)
      if g < len(vit_cfg.groups) - 1:
        x = mr_adapter.MRAdapter(cfg.adapter, name=f"adapter_{g}", **kw)(x, grid, high)
    tokens = layers.dense(vit_cfg.width, ("vision_embed", "embed"), name="vit_out", **kw)(x)
    aligned = mr_adapter.align_to_grid(high, grid).reshape(x.shape[0], -1, high.shape[-1])
    tokens = tokens + layers.dense(vit_cfg.width, ("conv_in", "embed"), name="convnext_out",
                                   **kw)(aligned)
    return layers.constrain(tokens, ("batch", "length", "embed"))


def from_config(block, common: dict, llm_width: int) -> LLaVAHRTowerConfig:
  """`c.model.tower`: `image_size`, `vit` (ViTConfig fields; its image_size is the position
  table's side), `vit_input`, `convnext` (ConvNeXtConfig fields), `adapter_gate`,
  `adapter_after`."""
  del llm_width
  return LLaVAHRTowerConfig(
      vit=vit_lib.from_block(block.vit, common), convnext=convnext_lib.from_block(block.convnext,
                                                                                common),
      image_size=block.image_size, vit_input=block.vit_input,
      adapter=mr_adapter.MRAdapterConfig(gate=block.adapter_gate),
      adapter_after=tuple(block.adapter_after))


base.register("llava_hr", LLaVAHRTowerConfig, LLaVAHRTower, from_config)
