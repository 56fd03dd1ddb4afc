"""LLaVA-HR's tower (METHODS §2.1): a high-resolution ConvNeXt injects its last-stage map into a
low-resolution ViT through MR-adapters between ViT blocks; the tokens into the LLM are the ViT's.

  image [S] ──ConvNeXt──────────────────────── G (last stage) ──────┐
     └─bilinear→ [vit.image_size] ─ViT blocks─ MR(·, G) ─ … ─ F ─ Linear(F) + Linear(align(G))
"""
import dataclasses

import flax.linen as nn
from jaxtyping import Array, Float

from mmjax.models import convnext as convnext_lib
from mmjax.models import layers
from mmjax.models import mr_adapter
from mmjax.models import vit as vit_lib
from mmjax.models.towers import encoders


@dataclasses.dataclass(frozen=True)
class LLaVAHRTowerConfig:
  vit: vit_lib.ViTConfig = vit_lib.ViTConfig(image_size=448)  # Low-res branch (CLIP ViT-L/14).
  convnext: convnext_lib.ConvNeXtConfig = convnext_lib.ConvNeXtConfig()  # High-res branch.
  image_size: int = 1024  # The tower's input side S (the ConvNeXt's); the ViT's is vit.image_size.
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
    if self.image_size % 32 or self.image_size < self.vit.image_size:
      raise ValueError(f"image_size={self.image_size} must be a multiple of 32 (the ConvNeXt "
                       f"stride) and at least the ViT's {self.vit.image_size}.")
    mr_adapter.check_alignment(self.high_grid, self.vit.grid)

  @property
  def adapter_positions(self) -> tuple[int, ...]:
    if self.adapter_after:
      return tuple(self.adapter_after)
    return tuple(self.vit.depth // 4 * i for i in (1, 2, 3) if self.vit.depth // 4 * i > 0)

  @property
  def grouped_vit(self) -> vit_lib.ViTConfig:
    """The ViT split into block groups at the adapters."""
    edges = (0,) + self.adapter_positions + (self.vit.depth,)
    return dataclasses.replace(self.vit, layer_groups=tuple(b - a for a, b in zip(edges, edges[1:])))

  @property
  def high_grid(self) -> int:
    return self.image_size // 32

  @property
  def width(self) -> int:
    return self.vit.width

  def num_tokens(self, height: int, width: int) -> int:
    del height, width  # The ViT always sees vit.image_size.
    return self.vit.grid ** 2


class LLaVAHRTower(nn.Module):
  config: LLaVAHRTowerConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B S S 3"]) -> Float[Array, "B N D"]:
    cfg = self.config
    if images.shape[1:3] != (cfg.image_size, cfg.image_size):
      raise ValueError(f"LLaVA-HR expects {cfg.image_size}x{cfg.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    vit_cfg = cfg.grouped_vit
    kw = dict(dtype=vit_cfg.dtype, param_dtype=vit_cfg.param_dtype)
    high = convnext_lib.ConvNeXt(cfg.convnext, name="convnext")(images)[-1]
    vit = vit_lib.ViT(vit_cfg, name="vit")
    x = vit.embed(encoders.resize_images(images, vit_cfg.image_size))
    n_cls = int(vit_cfg.use_cls)
    grid = (vit_cfg.grid, vit_cfg.grid)
    for g in range(len(vit_cfg.groups)):
      x, _ = vit.run_group(x, g)
      if g < len(vit_cfg.groups) - 1:
        adapted = mr_adapter.MRAdapter(cfg.adapter, name=f"adapter_{g}", **kw)(
            x[:, n_cls:], grid, high)
        x = x.at[:, n_cls:].set(adapted)
    tokens = layers.dense(vit_cfg.width, ("vision_embed", "embed"), name="vit_out", **kw)(
        x[:, n_cls:])
    aligned = mr_adapter.align_to_grid(high, grid).reshape(x.shape[0], -1, high.shape[-1])
    tokens = tokens + layers.dense(vit_cfg.width, ("conv_in", "embed"), name="convnext_out",
                                   **kw)(aligned)
    return layers.constrain(tokens, ("batch", "length", "embed"))
