"""LLaVA-HR's mixture-of-resolution adapter: high-resolution ConvNeXt features injected into the
low-resolution ViT between its blocks (METHODS §2.1, the authors' `S2FStitchAlignModuleV2`).

  f_l(F) = 1×1 conv (zero init) ∘ GELU ∘ depthwise 7×7 conv, on the ViT tokens as a map
  f_h(G) = 1×1 conv (zero init) ∘ GELU ∘ 1×1 conv, on the ConvNeXt map, then aligned to the
           ViT grid (bilinear upsampling with align_corners=True when it is smaller, average
           pooling with kernel = stride = ratio when it is larger)
  F ← F + f_l(F);  g = W2 GELU(W1 mean_tokens[F, f_h]);  out = F + tanh(g) · f_h
(one tanh, as in the authors' `fast_feat + slow_feat_align * gate.tanh()`, luogen1996/LLaVA-HR
@1212ffb, `multipath_encoder_wapper.py`; the gate MLP ends without an activation).

The gate is one scalar per image in the authors' code (default) or one per channel (the paper's
W2 ∈ R^{d×d/2}). Both zero inits make the adapter the identity when it is created, so a
pretrained ViT is undisturbed at the start of training.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import convnext
from mmjax.models import interpolate
from mmjax.models import layers
from mmjax.shapes import Array, Float

GATES = ("scalar", "channel")


@dataclasses.dataclass(frozen=True)
class MRAdapterConfig:
  gate: str = "scalar"  # "scalar" per image (author code) or "channel" (the paper's formula).
  kernel_size: int = 7  # f_l's depthwise convolution.

  def __post_init__(self):
    if self.gate not in GATES:
      raise ValueError(f"Unknown MR-adapter gate {self.gate!r}; valid: {GATES}.")


def check_alignment(high: int, low: int) -> None:
  """A square high-resolution grid can be aligned to a square ViT grid: smaller (upsampled) or
  an integer multiple (average-pooled)."""
  if high > low and high % low:
    raise ValueError(f"A {high}x{high} high-resolution map cannot be average-pooled onto the "
                     f"{low}x{low} ViT grid: its side must be a multiple of the ViT grid's (or "
                     "at most it).")


def align_to_grid(x: Float[Array, "B h w C"], grid: tuple[int, int]) -> Float[Array, "B H W C"]:
  """LLaVA-HR's grid alignment: bilinear (align_corners) up, average pooling down."""
  h, w = x.shape[1:3]
  if (h, w) == tuple(grid):
    return x
  if h < grid[0] and w < grid[1]:
    return interpolate.resize(x, grid, "bilinear", align_corners=True)
  check_alignment(h, grid[0])
  check_alignment(w, grid[1])
  r = h // grid[0]
  return nn.avg_pool(x, (r, r), strides=(r, r))


def _conv1x1(features: int, name: str, dtype: str, param_dtype: str, zero: bool = False):
  init = nn.initializers.zeros if zero else None
  return layers.dense(features, ("conv_in", "conv_out"), name=name, dtype=dtype,
                      param_dtype=param_dtype, kernel_init=init)


class MRAdapter(nn.Module):
  """One adapter; `__call__` takes the ViT tokens (no class token) and the ConvNeXt map."""
  config: MRAdapterConfig
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens: Float[Array, "B N D"], grid: tuple[int, int],
               high: Float[Array, "B h w C2"]) -> Float[Array, "B N D"]:
    cfg = self.config
    b, n, d = tokens.shape
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    k = cfg.kernel_size
    dw_kernel = self.param(
        "dw_kernel", layers.partitioned(nn.initializers.lecun_normal(),
                                        ("conv_h", "conv_w", None, "vision_embed")),
        (k, k, 1, d), self.param_dtype)
    dw_bias = self.param("dw_bias", layers.partitioned(nn.initializers.zeros, ("vision_embed",)),
                         (d,), self.param_dtype)
    x = tokens.reshape(b, *grid, d)
    f_l = convnext.depthwise_conv(x, dw_kernel.astype(self.dtype)) + dw_bias.astype(self.dtype)
    f_l = _conv1x1(d, "low_out", **kw, zero=True)(nn.gelu(f_l, approximate=False))
    x = x + f_l

    f_h = _conv1x1(high.shape[-1], "high_in", **kw)(high)
    f_h = _conv1x1(d, "high_out", **kw, zero=True)(nn.gelu(f_h, approximate=False))
    f_h = align_to_grid(f_h, grid)

    pooled = jnp.concatenate([x, f_h], axis=-1).mean(axis=(1, 2))
    g = layers.dense(d // 2, ("vision_embed", "mlp"), name="gate_in", **kw)(pooled)
    g = nn.gelu(g, approximate=False)
    g = layers.dense(1 if cfg.gate == "scalar" else d, ("mlp", None), name="gate_out", **kw)(g)
    gate = jnp.tanh(g)
    if not self.is_initializing():  # Sown for inspection; `init` must return parameters only.
      self.sow("intermediates", "gate", gate)
    out = x + gate[:, None, None, :] * f_h
    return out.reshape(b, n, d)
