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

from mmjax.models import layers
from mmjax.shapes import Array, Float


def regions(high: Float[Array, "B H W C"], grid: tuple[int, int]) -> Float[Array, "B N _region C"]:
  """Splits a map into the row-major grid of M×M regions under each low-resolution token."""
  b, h, w, c = high.shape
  if h % grid[0] or w % grid[1] or h // grid[0] != w // grid[1]:
    raise ValueError(f"A {h}x{w} high-resolution map does not split into square regions under "
                     f"a {grid[0]}x{grid[1]} token grid.")
  m = h // grid[0]
  x = high.reshape(b, grid[0], m, grid[1], m, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid[0] * grid[1], m * m, c)


class PatchInfoMining(nn.Module):
  """Tokens [B, N, C] attend to their regions of a high-resolution map [B, H, W, C_aux].

  Keys and values are affine in the normalised map, so the attention runs in the map's own
  channels: q·k = r (d · (γ_k ⊙ W_k q)) + (a constant per token, which the softmax drops) and
  Σ p v = value(γ_v ⊙ Σ p r d + β_v), with d the map minus its channel mean and r its inverse
  standard deviation. Equal to projecting every high-resolution position (the reference) at a
  fraction of the cost: no [B, N, M², C] keys or values, two matrix products per token instead
  of per position (Mini-Gemini's map has 64 positions per token at `size=small`, 64–576 in the
  paper's geometry).
  """
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens: Float[Array, "B N C"], grid: tuple[int, int],
               high: Float[Array, "B H W C2"]) -> Float[Array, "B N C"]:
    c = tokens.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def projection(name, in_axis):
      return (layers.layer_norm(name=f"{name}_norm", axis_name=in_axis, **kw),
              layers.dense(c, (in_axis, "embed"), name=name, **kw))

    query_norm, query = projection("query", "vision_embed")
    q = query(query_norm(tokens))
    h = regions(high, grid)
    (key_norm, key), (value_norm, value) = projection("key", "conv_in"), projection(
        "value", "conv_in")
    # The key and value layers are used through their parameters, not applied to the map:
    # applying them to an empty batch binds those (same names, shapes and initialisers).
    empty = h[:0, 0, 0]
    key(key_norm(empty))
    value_norm(empty)
    k_scale, k_kernel, v_scale, v_bias = (
        nn.unbox(layer.variables["params"][name]).astype(self.dtype)
        for layer, name in ((key_norm, "scale"), (key, "kernel"), (value_norm, "scale"),
                            (value_norm, "bias")))
    # Both LayerNorms normalise the same map: one set of statistics, in float32 as in
    # `layers.layer_norm`.
    hf = h.astype(jnp.float32)
    centred = hf - jnp.mean(hf, axis=-1, keepdims=True)
    inv_std = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1) + key_norm.epsilon)
    centred = centred.astype(self.dtype)
    inv_std = inv_std.astype(self.dtype)
    probe = jnp.einsum("bnc,hc->bnh", q, k_kernel) * k_scale
    logits = jnp.einsum("bnmh,bnh->bnm", centred, probe) * inv_std / jnp.sqrt(
        jnp.asarray(c, q.dtype))
    # The reference zeroes NaN logits (seen with bf16 overflow) before the softmax.
    logits = jnp.nan_to_num(logits.astype(jnp.float32), nan=0.0)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    mixed = jnp.einsum("bnm,bnmh->bnh", weights * inv_std, centred)
    return tokens + value(mixed * v_scale + v_bias)
