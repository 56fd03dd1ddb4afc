"""LlamaForCausalLM and Qwen2ForCausalLM ↔ `mmjax.models.llm.Decoder`."""
from typing import Any

from mmjax.convert import mapping
from mmjax.models.llm import LLMConfig

CONFIG_TYPE = LLMConfig
_SUPPORTED_ROPE = ("default",)


def _rope(hf: dict[str, Any]) -> float:
  """RoPE theta from either config format (transformers 5 `rope_parameters`, or older keys)."""
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if rope_type not in _SUPPORTED_ROPE:
    raise ValueError(f"RoPE type {rope_type!r} is not supported; supported: {_SUPPORTED_ROPE}.")
  return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any]) -> LLMConfig:
  model_type = hf.get("model_type")
  if model_type not in ("llama", "qwen2", "mistral"):
    raise ValueError(f"model_type {model_type!r} is not a LLaMA, Qwen2 or Mistral config.")
  if model_type == "mistral":
    # Mistral is LLaMA's architecture plus an optional sliding window (none in Mistral-7B v0.2,
    # LLaVA-NeXT's decoder); it exports back as a LLaMA config of the same tensors.
    # transformers' MistralConfig defaults apply to keys a config leaves out.
    window = hf.get("sliding_window", 4096)
    context = hf.get("max_position_embeddings") or 131072
    if window is not None and window < context:
      raise ValueError(f"Mistral sliding-window attention (sliding_window={window}) is not "
                       "supported; valid: null.")
    hf = {**hf, "attention_bias": False, "mlp_bias": False}
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported; LLaMA/Qwen2 use 'silu'.")
  if model_type == "qwen2":
    sliding = hf.get("use_sliding_window") or any(
        t != "full_attention" for t in hf.get("layer_types") or [])
    if sliding:
      raise ValueError("Qwen2 sliding-window attention is not supported (use_sliding_window).")
    qkv_bias, out_bias, mlp_bias = True, False, False
  else:
    qkv_bias = out_bias = bool(hf.get("attention_bias", False))
    mlp_bias = bool(hf.get("mlp_bias", False))
    if hf.get("pretraining_tp", 1) != 1:
      raise ValueError("pretraining_tp != 1 is not supported.")
  heads = hf["num_attention_heads"]
  return LLMConfig(
      vocab_size=hf["vocab_size"], width=hf["hidden_size"], depth=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], act="silu", norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=_rope(hf), qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias,
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_positions=int(hf.get("max_position_embeddings") or 0))


def text_config_to_hf(config: LLMConfig) -> dict[str, Any]:
  """A whole multimodal model's `text_config` (no `architectures`): Qwen2's when q, k and v alone
  have biases (LLaMA's attention_bias covers o too), else LLaMA's."""
  qwen2 = config.qkv_bias and not config.out_bias
  out = config_to_hf(config, "Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM")
  del out["architectures"]
  return out


def config_to_hf(config: LLMConfig, architecture: str) -> dict[str, Any]:
  common = {
      "architectures": [architecture], "vocab_size": config.vocab_size,
      "hidden_size": config.width, "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.depth, "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads, "head_dim": config.kv_dim,
      "hidden_act": config.act, "rms_norm_eps": config.norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "tie_word_embeddings": config.tie_embeddings, "dtype": config.param_dtype,
  }
  if config.max_positions:
    common["max_position_embeddings"] = config.max_positions
  if architecture == "Qwen2ForCausalLM":
    if not config.qkv_bias or config.out_bias or config.mlp_bias:
      raise ValueError("Qwen2 has biases on q/k/v only: need qkv_bias=True, out_bias=False, "
                       "mlp_bias=False.")
    return {**common, "model_type": "qwen2", "use_sliding_window": False}
  if architecture == "LlamaForCausalLM":
    if config.qkv_bias != config.out_bias:
      raise ValueError("LLaMA's attention_bias covers q, k, v and o together: need "
                       "qkv_bias == out_bias.")
    return {**common, "model_type": "llama", "attention_bias": config.qkv_bias,
            "mlp_bias": config.mlp_bias}
  raise ValueError(f"Architecture {architecture!r} is not LlamaForCausalLM or Qwen2ForCausalLM.")


def rules(config: LLMConfig) -> list[mapping.Rule]:
  d, n, k, h = config.width, config.num_heads, config.num_kv_heads, config.kv_dim
  out = [mapping.Rule("model.embed_tokens.weight", ("embedder", "embedding"))]
  for i in range(config.depth):
    hf, mm = f"model.layers.{i}", ("blocks", f"layers_{i}")
    out += mapping.linear_rules(f"{hf}.self_attn.q_proj", mm + ("attn", "q"), (d,), (n, h),
                                config.qkv_bias)
    out += mapping.linear_rules(f"{hf}.self_attn.k_proj", mm + ("attn", "k"), (d,), (k, h),
                                config.qkv_bias)
    out += mapping.linear_rules(f"{hf}.self_attn.v_proj", mm + ("attn", "v"), (d,), (k, h),
                                config.qkv_bias)
    out += mapping.linear_rules(f"{hf}.self_attn.o_proj", mm + ("attn", "o"), (n, h), (d,),
                                config.out_bias)
    for name in ("gate", "up"):
      out += mapping.linear_rules(f"{hf}.mlp.{name}_proj", mm + ("mlp", name), (d,),
                                  (config.mlp_dim,), config.mlp_bias)
    out += mapping.linear_rules(f"{hf}.mlp.down_proj", mm + ("mlp", "down"), (config.mlp_dim,),
                                (d,), config.mlp_bias)
    out += mapping.norm_rules(f"{hf}.input_layernorm", mm + ("attn_norm",), bias=False)
    out += mapping.norm_rules(f"{hf}.post_attention_layernorm", mm + ("mlp_norm",), bias=False)
  out += mapping.norm_rules("model.norm", ("final_norm",), bias=False)
  if not config.tie_embeddings:
    out += mapping.linear_rules("lm_head", ("lm_head",), (d,), (config.vocab_size,), False)
  return out
