"""Decoder-only LLM of the LLaMA / Qwen2 family, with a KV cache for prefill + decode.

Positions are an explicit input (so packing, left padding and M-RoPE need no change here),
and the model is split into `embed` and `__call__` on embeddings so that an MLLM can write visual
tokens into the sequence in between.
"""
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import attention
from mmjax.models import layers
from mmjax.models import rope as rope_lib
from mmjax.models import stack
from mmjax.shapes import Array, Bool, Float, Int

Cache = dict[str, Array]  # {"k", "v": [n B S Nk Dh], "valid": [B S] bool, "index": [] int32}


# Named sizes (width, depth, heads, MLP width): the CPU sizes trained from scratch here and
# LLaMA-2-7B / Vicuna-7B. Configs expand one into their `llm` block (configs/common.py).
VARIANTS = {
    "tiny": dict(width=64, depth=2, num_heads=2, num_kv_heads=2, mlp_dim=256),
    "small": dict(width=192, depth=4, num_heads=4, num_kv_heads=4, mlp_dim=768),
    "base": dict(width=384, depth=6, num_heads=6, num_kv_heads=6, mlp_dim=1536),
    "7b": dict(width=4096, depth=32, num_heads=32, num_kv_heads=32, mlp_dim=11008),
}


def variant(name: str) -> dict[str, int]:
  """The fields of a named size (`VARIANTS`)."""
  if name not in VARIANTS:
    raise ValueError(f"Unknown LLM variant {name!r}; valid: {sorted(VARIANTS)}.")
  return dict(VARIANTS[name])


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """The decoder named "llama" (`mmjax.models.decoders`): reads only the sequence."""

  READS_VISUAL_MASK: ClassVar[bool] = False
  READS_MEMORY: ClassVar[bool] = False

  vocab_size: int = 32000
  width: int = 4096  # hidden_size.
  depth: int = 32  # Number of decoder blocks.
  num_heads: int = 32
  num_kv_heads: int = 32  # < num_heads: grouped-query attention.
  head_dim: int = 0  # 0: width // num_heads.
  mlp_dim: int = 11008  # Hidden width of the SwiGLU MLP.
  act: str = "silu"
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  mrope_sections: tuple[int, ...] = ()  # Qwen2-VL M-RoPE (t, h, w) sections; () = 1D RoPE.
  qkv_bias: bool = False  # Qwen2: True.
  out_bias: bool = False  # LLaMA's `attention_bias` puts a bias on q, k, v and o.
  mlp_bias: bool = False
  tie_embeddings: bool = False  # Output head shares the token embedding table.
  # The context a converted checkpoint was trained for (max_position_embeddings); 0: not set.
  # RoPE has no table to bound positions: generation refuses prompts longer than this.
  max_positions: int = 0
  scan_layers: bool = False
  remat: bool = False
  attention_impl: str | None = None  # None (XLA chooses), "xla" or "cudnn".
  dtype: str = "float32"  # Compute dtype (float32 or bfloat16).
  param_dtype: str = "float32"  # Storage dtype of the parameters.

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LLM num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}.")
    if not self.head_dim and self.width % self.num_heads:
      raise ValueError(f"LLM width={self.width} is not divisible by num_heads={self.num_heads}; "
                       "set head_dim explicitly.")
    if self.attention_impl not in attention.IMPLEMENTATIONS:
      raise ValueError(f"Unknown attention_impl {self.attention_impl!r}; "
                       f"valid: {attention.IMPLEMENTATIONS}.")
    if self.mrope_sections and sum(self.mrope_sections) * 2 != self.kv_dim:
      raise ValueError(f"LLM mrope_sections={self.mrope_sections} must sum to head_dim / 2 = "
                       f"{self.kv_dim // 2}.")
    layers.activation(self.act)

  @property
  def kv_dim(self) -> int:
    return self.head_dim or self.width // self.num_heads

  @property
  def position_axes(self) -> int:
    return 3 if self.mrope_sections else 1

  def init_cache(self, batch: int, length: int, dtype: str | None = None) -> "Cache":
    return init_cache(self, batch, length, dtype)


class DecoderBlock(nn.Module):
  """x + attn(norm(x)); x + swiglu(norm(x))."""
  config: LLMConfig

  @nn.compact
  def __call__(self, x: Float[Array, "B L D"], cache: dict[str, Array] | None,
               mask: Bool[Array, "B 1 L S"], rope: rope_lib.Angles,
               cache_index: Int[Array, ""] | None):
    cfg = self.config
    kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = layers.RMSNorm(cfg.norm_eps, name="attn_norm", **kw)(x)
    h, new_cache = attention.Attention(
        cfg.num_heads, cfg.num_kv_heads, cfg.kv_dim, qkv_bias=cfg.qkv_bias,
        out_bias=cfg.out_bias, implementation=cfg.attention_impl,
        name="attn", **kw)(h, mask, rope, cache, cache_index)
    x = x + h
    h = layers.RMSNorm(cfg.norm_eps, name="mlp_norm", **kw)(x)
    x = x + layers.GatedMlp(cfg.mlp_dim, cfg.act, cfg.mlp_bias, name="mlp", **kw)(h)
    return layers.constrain(x, ("batch", "length", "embed")), (None, new_cache)


def init_cache(config: LLMConfig, batch: int, length: int, dtype: str | None = None) -> Cache:
  """An empty cache of `length` slots per sequence."""
  shape = (config.depth, batch, length, config.num_kv_heads, config.kv_dim)
  dtype = dtype or config.dtype
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "valid": jnp.zeros((batch, length), jnp.bool_), "index": jnp.zeros((), jnp.int32)}


class Decoder(nn.Module):
  config: LLMConfig

  def setup(self):
    cfg = self.config
    self.embedder = nn.Embed(
        cfg.vocab_size, cfg.width, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        embedding_init=layers.partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.blocks = stack.LayerStack(DecoderBlock, cfg, cfg.depth, scan=cfg.scan_layers,
                                   remat=cfg.remat)
    self.final_norm = layers.RMSNorm(cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = layers.dense(cfg.vocab_size, ("embed", "vocab"), name="lm_head",
                                  use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype)

  def embed(self, tokens: Int[Array, "B L"]) -> Float[Array, "B L D"]:
    return layers.constrain(self.embedder(tokens), ("batch", "length", "embed"))

  def logits(self, x: Float[Array, "B L D"]) -> Float[Array, "B L V"]:
    if self.config.tie_embeddings:
      out = self.embedder.attend(x)
    else:
      out = self.lm_head(x)
    return layers.constrain(out, ("batch", "length", "vocab"))

  def rope(self, positions: Int[Array, "B L"] | Int[Array, "3 B L"]) -> rope_lib.Angles:
    cfg = self.config
    if cfg.mrope_sections:
      if positions.ndim != 3:
        raise ValueError(f"An M-RoPE LLM needs positions of shape [3, B, L], got "
                         f"{positions.shape}.")
      return rope_lib.mrope_angles(positions, cfg.kv_dim, cfg.rope_theta, cfg.mrope_sections)
    return rope_lib.rope_angles(positions, cfg.kv_dim, cfg.rope_theta)

  def __call__(self, x: Float[Array, "B L D"], positions: Int[Array, "B L"] | Int[Array, "3 B L"],
               segment_ids: Int[Array, "B L"], cache: Cache | None = None
               ) -> tuple[Float[Array, "B L V"], Float[Array, "B L D"], Cache | None]:
    """Runs the blocks on embeddings; returns (logits, final hidden states, updated cache).

    Without a cache: causal attention within segments (`segment_ids`, 0 = padding). With one:
    the L tokens are written at `cache["index"]`, tokens with segment id 0 are marked invalid
    (left padding of a prompt), and each token sees the valid slots up to its own. Positions are
    [3, B, L] (temporal, height, width) for an M-RoPE model.
    """
    if cache is None:
      mask, kv, index = attention.causal_segment_mask(segment_ids), None, None
    else:
      index = cache["index"]
      valid = jax.lax.dynamic_update_slice(cache["valid"], segment_ids != 0, (0, index))
      mask = attention.cache_mask(valid, index, x.shape[1])
      kv = {"k": cache["k"], "v": cache["v"]}
    x, _, kv = self.blocks(x.astype(self.config.dtype), kv, mask, self.rope(positions), index)
    x = self.final_norm(x)
    new_cache = None
    if cache is not None:
      new_cache = {**kv, "valid": valid, "index": index + x.shape[1]}
    return self.logits(x), x, new_cache

  def forward_tokens(self, tokens: Int[Array, "B L"], positions: Int[Array, "B L"],
                     segment_ids: Int[Array, "B L"], cache: Cache | None = None):
    """`embed` then `__call__`: a text-only forward pass."""
    return self(self.embed(tokens), positions, segment_ids, cache)


def from_block(block, common: dict, vocab_size: int) -> LLMConfig:
  """The LLMConfig of a config block holding its fields (`c.model.llm`, its `name` aside), with
  the model's shared settings; a `vocab_size` of 0 there takes the tokenizer's `vocab_size`."""
  fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in dict(block).items()
            if k != "name"}
  fields["vocab_size"] = fields.get("vocab_size") or vocab_size
  return LLMConfig(**fields, **common)
