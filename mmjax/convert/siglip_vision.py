"""Hugging Face `SiglipVisionModel` ↔ mmjax `ViT` (no class token, a biased patch convolution, no
LayerNorm before the blocks; LLaVA-OneVision's tower).

The blocks are named as CLIP's (`encoder.layers.N.{layer_norm1, self_attn.*_proj, layer_norm2,
mlp.fc1, mlp.fc2}`). `post_layernorm` maps to the ViT's `post_norm`; the attention-pooling `head`
(`vision_use_head`) has no mmjax equivalent, so its tensors are kept beside the parameters
(`KEPT`) and written back by the export. Checkpoints of transformers 4.x prefix every name with
`vision_model.`, which `select_tensors` strips.
"""
from typing import Any

import numpy as np

from mmjax.convert import clip_vision
from mmjax.convert import mapping
from mmjax.models.vit import ViTConfig

CONFIG_TYPE = ViTConfig
ARCHITECTURE = "SiglipVisionModel"
KEPT = ("head.",)
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# `transformers.SiglipVisionConfig` defaults, which apply to keys a config.json leaves out.
HF_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
               "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True}
_SIGLIP = {"use_cls": False, "patch_bias": True, "pre_norm": False,
           "position_embedding": "learned", "stem": "patch", **clip_vision.PLAIN_BLOCKS}


def config_from_hf(hf_config: dict[str, Any]) -> ViTConfig:
  """A `SiglipVisionModel` config.json (or a `SiglipModel` one, via its `vision_config`)."""
  hf = {**HF_DEFAULTS, **hf_config.get("vision_config", hf_config)}
  if hf["num_channels"] != 3:
    raise ValueError(f"SigLIP vision num_channels={hf['num_channels']} is not supported; "
                     "valid: 3.")
  if hf["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"SigLIP vision hidden_act={hf['hidden_act']!r} is not supported; valid: "
                     f"{sorted(ACTIVATIONS)}.")
  # The patch convolution reads the first grid · patch pixels of a side (384 px at patch 14:
  # 27 patches, 378 px), and so does the ViT.
  patch = int(hf["patch_size"])
  return ViTConfig(image_size=int(hf["image_size"]) // patch * patch, patch_size=patch,
                   width=hf["hidden_size"], depth=hf["num_hidden_layers"],
                   num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
                   act=ACTIVATIONS[hf["hidden_act"]], norm_eps=hf["layer_norm_eps"], **_SIGLIP)


def check(config: ViTConfig) -> None:
  """Raises unless `config` describes a ViT that `SiglipVisionModel` can hold."""
  clip_vision.check_vit(config, _SIGLIP, ACTIVATIONS, ARCHITECTURE)


def config_to_hf(config: ViTConfig, architecture: str, use_head: bool = True) -> dict[str, Any]:
  if architecture != ARCHITECTURE:
    raise ValueError(f"Architecture {architecture!r} is not handled by the SigLIP vision "
                     f"converter; valid: [{ARCHITECTURE!r}].")
  check(config)
  return {"architectures": [architecture], "model_type": "siglip_vision_model",
          "hidden_size": config.width, "intermediate_size": config.mlp_dim,
          "num_hidden_layers": config.depth, "num_attention_heads": config.num_heads,
          "num_channels": 3, "image_size": config.image_size, "patch_size": config.patch_size,
          "hidden_act": {v: k for k, v in ACTIVATIONS.items()}[config.act],
          "layer_norm_eps": config.norm_eps, "vision_use_head": use_head,
          "dtype": config.param_dtype}


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """Bare names: the `vision_model.` prefix of transformers 4.x names stripped."""
  return clip_vision.select_tensors(hf_config, tensors)


def rules(config: ViTConfig) -> list[mapping.Rule]:
  """Every tensor of a `SiglipVisionModel` but its attention-pooling head."""
  check(config)
  out = [
      # torch conv weight [D, C, P, P] ↔ our kernel [P, P, C, D] (channels-last patches).
      mapping.Rule("embeddings.patch_embedding.weight", ("patch_kernel",),
                   lambda w: np.transpose(w, (2, 3, 1, 0)),
                   lambda k: np.transpose(k, (3, 2, 0, 1))),
      mapping.Rule("embeddings.patch_embedding.bias", ("patch_bias",)),
      mapping.Rule("embeddings.position_embedding.weight", ("pos_embedding",)),
      *mapping.norm_rules("post_layernorm", ("post_norm",)),
  ]
  return out + clip_vision.stack_rules(config, "encoder.layers")
