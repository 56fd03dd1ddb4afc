"""Hugging Face `InternVLVisionModel` (InternViT) ↔ mmjax `ViT`.

InternViT is a ViT with a class token, a biased patch convolution, no LayerNorm before the
blocks, learned per-channel scales on both branches of every block (λ1, λ2 → `ls1`, `ls2`), the
block norms a LayerNorm or (InternViT-6B) an RMSNorm, optionally no q/k/v biases and an RMSNorm
of q and of k over all heads (`use_qk_norm`). Names as transformers 5 writes them:
`embeddings.{cls_token, patch_embeddings.projection, position_embeddings}`,
`encoder.layer.N.{layernorm_before, attention.{q,k,v}_proj, attention.{q,k}_norm,
attention.projection_layer, lambda_1, layernorm_after, mlp.fc1, mlp.fc2, lambda_2}`, and a final
`layernorm` unless `use_mean_pooling`, which the ViT's hidden states never pass through: it is kept
beside the parameters (`KEPT`), as is a `mask_token`.
"""
from typing import Any

import numpy as np

from mmjax.convert import clip_vision
from mmjax.convert import mapping
from mmjax.models.vit import ViTConfig

CONFIG_TYPE = ViTConfig
ARCHITECTURE = "InternVLVisionModel"
KEPT = ("layernorm.", "embeddings.mask_token")
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh"}
NORMS = ("layer_norm", "rms_norm")
# `transformers.InternVLVisionConfig` defaults, which apply to keys a config.json leaves out.
HF_DEFAULTS = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
               "attention_bias": False, "use_qk_norm": False, "intermediate_size": 4096,
               "hidden_act": "gelu", "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
               "image_size": [448, 448], "patch_size": [14, 14], "num_channels": 3,
               "use_mask_token": False, "use_absolute_position_embeddings": True,
               "use_mean_pooling": True}
_INTERNVIT = {"use_cls": True, "cls_in_blocks": True, "patch_bias": True, "pre_norm": False,
              "position_embedding": "learned", "stem": "patch", "layer_scale": True}


def _square(value: Any, key: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"InternViT {key}={value!r} is not square; mmjax's ViT supports square "
                       "sizes only.")
    value = value[0]
  return int(value)


def config_from_hf(hf_config: dict[str, Any]) -> ViTConfig:
  hf = {**HF_DEFAULTS, **hf_config.get("vision_config", hf_config)}
  checks = {"num_channels": (hf["num_channels"], (3,)), "hidden_act": (hf["hidden_act"],
            tuple(ACTIVATIONS)), "norm_type": (hf["norm_type"], NORMS),
            "use_absolute_position_embeddings": (hf["use_absolute_position_embeddings"], (True,))}
  for key, (value, valid) in checks.items():
    if value not in valid:
      raise ValueError(f"InternViT {key}={value!r} is not supported; valid: {list(valid)}.")
  return ViTConfig(image_size=_square(hf["image_size"], "image_size"),
                   patch_size=_square(hf["patch_size"], "patch_size"), width=hf["hidden_size"],
                   depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                   mlp_dim=hf["intermediate_size"], act=ACTIVATIONS[hf["hidden_act"]],
                   norm_eps=hf["layer_norm_eps"], norm=hf["norm_type"],
                   qkv_bias=bool(hf["attention_bias"]), qk_norm=bool(hf["use_qk_norm"]),
                   **_INTERNVIT)


def check(config: ViTConfig) -> None:
  clip_vision.check_vit(config, _INTERNVIT, ACTIVATIONS, ARCHITECTURE)


def config_to_hf(config: ViTConfig, architecture: str) -> dict[str, Any]:
  if architecture != ARCHITECTURE:
    raise ValueError(f"Architecture {architecture!r} is not handled by the InternViT converter; "
                     f"valid: [{ARCHITECTURE!r}].")
  check(config)
  return {"architectures": [architecture], "model_type": "internvl_vision",
          "hidden_size": config.width, "num_hidden_layers": config.depth,
          "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim,
          "hidden_act": {v: k for k, v in ACTIVATIONS.items()}[config.act],
          "norm_type": config.norm, "layer_norm_eps": config.norm_eps,
          "attention_bias": config.qkv_bias, "use_qk_norm": config.qk_norm,
          "image_size": [config.image_size] * 2, "patch_size": [config.patch_size] * 2,
          "num_channels": 3, "use_absolute_position_embeddings": True, "use_mean_pooling": True,
          "use_mask_token": False, "dtype": config.param_dtype}


def with_kept(hf_config: dict[str, Any], kept: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """`use_mean_pooling` (no final `layernorm`) and `use_mask_token` as the kept tensors say."""
  hf_config["use_mean_pooling"] = not any(k.startswith(prefix + "layernorm.") for k in kept)
  hf_config["use_mask_token"] = prefix + "embeddings.mask_token" in kept
  return hf_config


# The names of a block's tensors in InternViT's checkpoints.
BLOCK = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
         "o": "attention.projection_layer", "q_norm": "attention.q_norm",
         "k_norm": "attention.k_norm", "ln1": "layernorm_before", "ln2": "layernorm_after",
         "fc1": "mlp.fc1", "fc2": "mlp.fc2", "ls1": "lambda_1", "ls2": "lambda_2"}


def rules(config: ViTConfig) -> list[mapping.Rule]:
  """Every tensor of an `InternVLVisionModel` but the kept ones."""
  check(config)
  out = [
      mapping.Rule("embeddings.cls_token", ("cls",), lambda t: t.reshape(-1),
                   lambda t: t.reshape(1, 1, -1)),
      # torch conv weight [D, C, P, P] ↔ our kernel [P, P, C, D] (channels-last patches).
      mapping.Rule("embeddings.patch_embeddings.projection.weight", ("patch_kernel",),
                   lambda w: np.transpose(w, (2, 3, 1, 0)),
                   lambda k: np.transpose(k, (3, 2, 0, 1))),
      mapping.Rule("embeddings.patch_embeddings.projection.bias", ("patch_bias",)),
      mapping.Rule("embeddings.position_embeddings", ("pos_embedding",),
                   lambda t: t.reshape(t.shape[-2:]), lambda t: t[None]),
  ]
  return out + clip_vision.stack_rules(config, "encoder.layer", BLOCK)
