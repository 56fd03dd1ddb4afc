"""Oryx's dynamic compressor: each ratio × ratio region of tokens becomes one token.

The region's average is the query (through `query`, to `mid` channels), its tokens the keys
(through `key`) and, unprojected, the values of one softmax attention; the output is the average
plus the attended value. Oryx uses ratio 1 for images (the region is one token: the output is
2x), 2 for short and 4 for long videos (4× and 16× fewer tokens).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.shapes import Array, Float


class DynamicCompressor(nn.Module):
  ratio: int = 1
  mid: int = 256  # Width of the query / key projections (the authors' `mid_channel`).
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Float[Array, "B N C"]) -> Float[Array, "B M C"]:
    """Tokens with every region's ratio² tokens contiguous (M = N / ratio²) → pooled tokens."""
    group = self.ratio ** 2
    b, n, c = x.shape
    if n % group:
      raise ValueError(f"DynamicCompressor: {n} tokens do not split into regions of "
                       f"ratio² = {group}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    regions = x.reshape(b, n // group, group, c)
    pooled = regions.mean(axis=2)
    query = layers.dense(self.mid, ("vision_embed", "mlp"), name="query", **kw)(pooled)
    key = layers.dense(self.mid, ("vision_embed", "mlp"), name="key", **kw)(regions)
    logits = jnp.einsum("bmd,bmgd->bmg", query, key) / jnp.sqrt(jnp.float32(self.mid))
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    return pooled + jnp.einsum("bmg,bmgc->bmc", attn, regions)
