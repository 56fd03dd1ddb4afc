"""Multi-head / grouped-query self-attention with an optional rotary embedding and KV cache.

All attention in mmjax goes through `dot_product_attention`, so a fused kernel (cuDNN flash
attention on GPU, a Pallas kernel on TPU) is one switch of `implementation` away.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import rope as rope_lib
from mmjax.shapes import Array, Bool, Float, Int

IMPLEMENTATIONS = (None, "xla", "cudnn")
KVCache = dict[str, Array]  # {"k": [B S Nk Dh], "v": [B S Nk Dh]}


def dot_product_attention(q: Float[Array, "B L Nh Dh"], k: Float[Array, "B S Nk Dh"],
                          v: Float[Array, "B S Nk Dh"], mask: Bool[Array, "B 1 L S"] | None,
                          implementation: str | None = None) -> Float[Array, "B L Nh Dh"]:
  """Softmax attention; K must divide N (grouped-query attention). Scale is 1/sqrt(H)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"Unknown attention implementation {implementation!r}; "
                     f"valid: {IMPLEMENTATIONS}.")
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


class Attention(nn.Module):
  """Self-attention, queries and keys rotated by `rope` (cos, sin from `mmjax.models.rope`) when
  given. With `cache`, the new keys/values are written at `cache_index` and the queries attend
  over the whole cache (the mask decides which slots are visible)."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qkv_bias: bool = False
  out_bias: bool = False
  # RMSNorm (eps 1e-6) of q and of k over all heads together, before rotation (InternViT-6B).
  qk_norm: bool = False
  implementation: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "B L D"], mask: Bool[Array, "B 1 L S"] | None,
               rope: rope_lib.Angles | None = None, cache: KVCache | None = None,
               cache_index: Int[Array, ""] | None = None
               ) -> tuple[Float[Array, "B L D"], KVCache | None]:
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.qkv_bias)
    q = layers.dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"), name="q", **kw)(x)
    k = layers.dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), name="k",
                     **kw)(x)
    v = layers.dense((self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"), name="v",
                     **kw)(x)
    if self.qk_norm:
      q, k = (layers.RMSNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=name)(t.reshape(*t.shape[:-2], -1)).reshape(t.shape)
              for name, t in (("q_norm", q), ("k_norm", k)))
    if rope is not None:
      q, k = rope_lib.apply_rope(q, rope), rope_lib.apply_rope(k, rope)
    q = layers.constrain(q, ("batch", "length", "heads", "kv"))
    k = layers.constrain(k, ("batch", "length", "kv_heads", "kv"))
    v = layers.constrain(v, ("batch", "length", "kv_heads", "kv"))
    new_cache = None
    if cache is not None:
      start = (0, cache_index, 0, 0)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
      new_cache = {"k": k, "v": v}
      k, v = k.astype(self.dtype), v.astype(self.dtype)
    out = dot_product_attention(q, k, v, mask, self.implementation)
    out = layers.constrain(out, ("batch", "length", "heads", "kv"))
    y = layers.dense(x.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1), name="o",
                     use_bias=self.out_bias, dtype=self.dtype, param_dtype=self.param_dtype)(out)
    return y, new_cache


def causal_segment_mask(segment_ids: Int[Array, "B L"]) -> Bool[Array, "B 1 L L"]:
  """Token t sees token s ≤ t of its own segment; segment 0 is padding and is never seen.

  Several sequences packed into one row get distinct segment ids (1, 2, …)."""
  t = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  return (causal[None] & same & (segment_ids[:, None, :] != 0))[:, None]


def cache_mask(valid: Bool[Array, "B S"], cache_index: Int[Array, ""],
               num_queries: int) -> Bool[Array, "B 1 L S"]:
  """Queries written at cache slots index..index+L-1 see every valid slot up to their own."""
  query_slots = cache_index + jnp.arange(num_queries)
  key_slots = jnp.arange(valid.shape[1])
  causal = key_slots[None, :] <= query_slots[:, None]
  return (causal[None] & valid[:, None, :])[:, None]
