"""Mini-Gemini's patch info mining: each low-resolution token queries only the high-resolution
features of its own M×M sub-region (METHODS §2.2, the authors' `unified_resampler`).

  Q = Linear(LN(x)),  K = Linear(LN(h)),  V = Linear(LN(h'))   (x: ViT tokens, h: their region)
  out = x + softmax(Q Kᵀ / √C) V                               (one head, M² keys per query)

The number of tokens into the LLM stays the number of low-resolution tokens: the high resolution
costs encoder compute only.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from mmjax.models import layers


def regions(high: Float[Array, "B H W C"], grid: tuple[int, int]) -> Float[Array, "B N M2 C"]:
  """Splits a map into the row-major grid of M×M regions under each low-resolution token."""
  b, h, w, c = high.shape
  if h % grid[0] or w % grid[1] or h // grid[0] != w // grid[1]:
    raise ValueError(f"A {h}x{w} high-resolution map does not split into square regions under "
                     f"a {grid[0]}x{grid[1]} token grid.")
  m = h // grid[0]
  x = high.reshape(b, grid[0], m, grid[1], m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid[0] * grid[1], m * m, c)


class PatchInfoMining(nn.Module):
  """Tokens [B, N, C] attend to their regions of a high-resolution map [B, H, W, C_aux]."""
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens: Float[Array, "B N C"], grid: tuple[int, int],
               high: Float[Array, "B H W Ch"]) -> Float[Array, "B N C"]:
    c = tokens.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def projection(name, x, in_axis):
      x = layers.layer_norm(name=f"{name}_norm", axis_name=in_axis, **kw)(x)
      return layers.dense(c, (in_axis, "embed"), name=name, **kw)(x)

    keys_in = regions(high, grid)
    q = projection("query", tokens, "vision_embed")
    k = projection("key", keys_in, "conv_in")
    v = projection("value", keys_in, "conv_in")
    logits = jnp.einsum("bnc,bnmc->bnm", q, k) / jnp.sqrt(jnp.asarray(c, q.dtype))
    # The reference zeroes NaN logits (seen with bf16 overflow) before the softmax.
    logits = jnp.nan_to_num(logits.astype(jnp.float32), nan=0.0)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return tokens + jnp.einsum("bnm,bnmc->bnc", weights, v)
