"""Oryx's tower: a native-resolution ViT on two packed views, the dynamic compressor, and the
two-view projector with learned newline, separator, begin and end tokens.

The data pipeline (`pipeline.OryxViews`) gives both views of an image (about low_base² pixels,
and the native size up to max_res²) as one row of patches, each view its own segment, with every
patch's bilinear taps into the learned position table — the authors' ViT resizes that table
(bilinear, align_corners=False) to each view's grid — and a static layout plan. The ViT attends
within a view only (block-diagonal, as the reference's cumulative sequence lengths), the
compressor pools ratio × ratio regions, and, as in the authors' `simple_mlp_twoview` projector,
an MLP maps every token to the LLM width, where the newline (after every row), separator (between
the views), begin and end tokens live (`resolution.oryx_layout`). The model's projector is
"identity". Output: the layout's tokens, padding after them.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.data import pipeline
from mmjax.models import connectors
from mmjax.models import layers
from mmjax.models import stack
from mmjax.models.dynamic_compressor import DynamicCompressor
from mmjax.models.towers import base
from mmjax.models.vit import ViTBlock, ViTConfig
from mmjax.shapes import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class OryxTowerConfig:
  # The authors' SigLIP-so400m/16: all 27 blocks used, no final LayerNorm, GELU (erf).
  vit: ViTConfig = ViTConfig(image_size=16, patch_size=16, width=1152, depth=27, num_heads=16,
                             mlp_dim=4304, act="gelu", norm_eps=1e-6, use_cls=False,
                             pre_norm=False, position_embedding="none")
  table: int = 128  # Side of the learned position table (2048 px / 16).
  ratio: int = 1  # Compressor pooling per side (1: images).
  mid: int = 256  # Compressor query / key width.
  out_width: int = 4096  # The LLM's width (projector output, special tokens).
  max_patches: int = 10240  # Patches per row (`pipeline.OryxViews.max_patches`).
  budget: int = 10457  # Layout length (`pipeline.OryxViews.budget`).
  low_res: int = 384  # The low view holds about low_res² pixels.
  max_res: int = 1536  # The native view holds at most max_res² pixels (larger images shrink).
  max_aspect: float = 3.0  # Longest aspect ratio the static budget holds (longer: refused).

  INPUTS = ("patches", "patch_segments", "pos_index", "pos_weight", "oryx_index", "oryx_kind")

  def __post_init__(self):
    if self.max_patches % self.ratio ** 2:
      raise ValueError(f"max_patches={self.max_patches} is not a multiple of ratio² = "
                       f"{self.ratio ** 2}.")

  @property
  def width(self) -> int:
    return self.out_width

  @property
  def max_tokens(self) -> int:
    return self.budget

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    return np.sum(views["oryx_kind"] != 0, axis=1)

  def policy(self, aspect: str) -> pipeline.OryxViews:
    del aspect  # Both views keep the image's aspect.
    return oryx_views(self.vit.patch_size, self.ratio, self.low_res, self.max_res, self.table,
                      self.max_aspect)


class OryxTower(nn.Module):
  config: OryxTowerConfig

  @nn.compact
  def __call__(self, patches: Float[Array, "B N F"], segments: Int[Array, "B N"],
               pos_index: Int[Array, "B N 4"], pos_weight: Float[Array, "B N 4"],
               index: Int[Array, "B P"], kind: Int[Array, "B P"]) -> Float[Array, "B P D"]:
    """Packed patches of both views (K = 3 · patch²) and the plans → [B, budget, out_width]."""
    cfg = self.config
    v = cfg.vit
    kw = dict(dtype=v.dtype, param_dtype=v.param_dtype)
    x = layers.dense(v.width, (None, "embed"), name="patch_embed", **kw)(patches)
    table = self.param("pos_embed", layers.partitioned(nn.initializers.normal(0.02),
                                                       (None, "embed")),
                       (cfg.table ** 2, v.width), v.param_dtype)
    taps = jnp.take(table.astype(x.dtype), pos_index, axis=0)  # [B, N, 4, width]
    x = x + jnp.einsum("bnk,bnkd->bnd", pos_weight.astype(x.dtype), taps)
    x = layers.constrain(x, ("batch", "length", "embed"))
    # Padding (segment 0) attends to padding only, so no row of the mask is empty.
    mask = (segments[:, :, None] == segments[:, None, :])[:, None]
    x, _, _ = stack.LayerStack(ViTBlock, v, v.depth, scan=v.scan_layers, remat=v.remat,
                               name="blocks")(x, None, mask, None)
    x = DynamicCompressor(cfg.ratio, cfg.mid, name="compressor", **kw)(x)
    x = connectors.Projector("mlp2x_gelu", cfg.out_width, name="projector", **kw)(x)
    special = self.param("special_tokens", layers.partitioned(
        nn.initializers.normal(cfg.out_width ** -0.5), (None, "embed")),
        (4, cfg.out_width), v.param_dtype)  # Kinds 2…5: newline, separator, begin, end.
    out = jnp.take_along_axis(x, index[..., None], axis=1)
    out = jnp.where((kind >= 2)[..., None],
                    jnp.take(special.astype(x.dtype), jnp.maximum(kind - 2, 0), axis=0), out)
    out = jnp.where((kind == 0)[..., None], 0.0, out)
    return layers.constrain(out, ("batch", "length", "embed"))


def oryx_views(patch: int, ratio: int, low_res: int, max_res: int, table: int,
               max_aspect: float) -> pipeline.OryxViews:
  """Oryx's policy: sides in multiples of patch · max(2, ratio), so the 2×2 regions the
  compressor and the projector's newlines assume stay whole."""
  return pipeline.OryxViews(patch=patch, ratio=ratio, multiple=patch * max(2, ratio),
                            low_base=low_res, max_res=max_res, table=table,
                            max_aspect=max_aspect)


def from_config(block, common: dict, llm_width: int) -> OryxTowerConfig:
  """`c.model.tower`: `vit` (width, depth, num_heads, mlp_dim, act, patch_size: SigLIP's
  blocks on packed patches), `low_res`, `max_res`, `ratio`, `pos_table`, `max_aspect`."""
  v = block.vit
  views = oryx_views(v.patch_size, block.ratio, block.low_res, block.max_res, block.pos_table,
                     block.max_aspect)
  vit = ViTConfig(image_size=v.patch_size, patch_size=v.patch_size, width=v.width, depth=v.depth,
                  num_heads=v.num_heads, mlp_dim=v.mlp_dim, act=v.act, norm_eps=1e-6,
                  use_cls=False, pre_norm=False, position_embedding="none", **common)
  return OryxTowerConfig(vit=vit, table=block.pos_table, ratio=block.ratio, out_width=llm_width,
                         max_patches=views.max_patches, budget=views.budget,
                         low_res=block.low_res, max_res=block.max_res,
                         max_aspect=block.max_aspect)


base.register("oryx", OryxTowerConfig, OryxTower, from_config)
