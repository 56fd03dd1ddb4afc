"""Qwen2-VL's native-resolution vision transformer on packed sequences.

Images of any size arrive as flat patch sequences (`mmjax.data.patches`): each patch is the
(channels, frames, row, column) pixels of a temporal_patch × patch × patch cube, listed so that
every merge × merge block of patches is contiguous. Several images share one row of the batch;
`segment_ids` keep their attention apart (block-diagonal, as the reference's cumulative sequence
lengths do) and 2D rotary embeddings of each patch's (row, column) stand in for a position table,
so no shape depends on the image size. The merger turns each block of merge² patches into one LLM
token: LayerNorm, concatenation, MLP.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import rope as rope_lib
from mmjax.models import stack
from mmjax.models import vit
from mmjax.shapes import Array, Float, Int


@dataclasses.dataclass(frozen=True)
class NativeViTConfig:
  patch_size: int = 14
  temporal_patch_size: int = 2  # Frames per patch cube; a still image is repeated to fill them.
  width: int = 1280  # embed_dim.
  depth: int = 32
  num_heads: int = 16
  mlp_dim: int = 5120
  act: str = "quick_gelu"
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  merge_size: int = 2  # Patches per side of one merged LLM token.
  out_width: int = 3584  # The merger's output width (the LLM's width).
  scan_layers: bool = False
  remat: bool = False
  attention_impl: str | None = None
  dtype: str = "float32"  # Compute dtype (float32 or bfloat16).
  param_dtype: str = "float32"  # Storage dtype of the parameters.

  def __post_init__(self):
    if self.width % self.num_heads or (self.width // self.num_heads) % 4:
      raise ValueError(f"Native ViT width={self.width} / num_heads={self.num_heads} must give a "
                       "head width divisible by 4 (2D rotary embeddings).")
    layers.activation(self.act)

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch cube."""
    return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

  @property
  def block(self) -> vit.ViTConfig:
    """The transformer blocks' settings (a ViT block fed rotary angles and a packing mask)."""
    return vit.ViTConfig(
        image_size=self.patch_size, patch_size=self.patch_size, width=self.width,
        depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, act=self.act,
        norm_eps=self.norm_eps, use_cls=False, pre_norm=False, position_embedding="none",
        scan_layers=self.scan_layers, remat=self.remat, attention_impl=self.attention_impl,
        dtype=self.dtype, param_dtype=self.param_dtype)


class NativeViT(nn.Module):
  config: NativeViTConfig

  @nn.compact
  def __call__(self, patches: Float[Array, "B N F"], positions: Int[Array, "B N 2"],
               segment_ids: Int[Array, "B N"]) -> dict[str, Array]:
    """Packed patches (K = config.patch_dim), their (row, column) in their image's patch grid and
    the image each belongs to (0 = padding) → `hidden` [B, N, width] (the last block's output)
    and `merged` [B, N / merge², out_width]. N must be a multiple of merge²."""
    cfg = self.config
    groups = cfg.merge_size ** 2
    if patches.shape[1] % groups:
      raise ValueError(f"Native ViT sequence of {patches.shape[1]} patches is not a multiple of "
                       f"merge_size² = {groups}.")
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    x = layers.dense(cfg.width, (None, "embed"), name="patch_embed", use_bias=False,
                     **kw)(patches)
    x = layers.constrain(x, ("batch", "length", "embed"))
    rope = rope_lib.axial_rope_angles(positions, cfg.width // cfg.num_heads, cfg.rope_theta)
    # Padding (segment 0) attends to padding only, so no row of the mask is empty.
    mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    x, _, _ = stack.LayerStack(vit.ViTBlock, cfg.block, cfg.depth, scan=cfg.scan_layers,
                               remat=cfg.remat, name="blocks")(x, None, mask, rope)
    b, n, d = x.shape
    h = layers.layer_norm(name="merger_norm", epsilon=cfg.norm_eps, **kw)(x)
    h = h.reshape(b, n // groups, groups * d)
    h = layers.dense(groups * d, ("embed", "mlp"), name="merger_fc1", **kw)(h)
    h = layers.dense(cfg.out_width, ("mlp", "embed"), name="merger_fc2", **kw)(
        layers.activation("gelu")(h))
    return {"hidden": x, "merged": layers.constrain(h, ("batch", "length", "embed"))}
