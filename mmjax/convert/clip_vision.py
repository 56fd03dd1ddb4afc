"""Hugging Face `CLIPVisionModel` ↔ mmjax `ViT`.

transformers 5.x saves a `CLIPVisionModel` under bare names (`embeddings.…`, `encoder.layers.…`);
checkpoints written by transformers 4.x, and 5.x re-saves of them, prefix every name with
`vision_model.`, which `select_tensors` strips. The position-id buffer is not persistent, so the
safetensors file holds parameters only.
"""
from typing import Any

import numpy as np

from mmjax.convert import mapping
from mmjax.models.vit import ViTConfig

CONFIG_TYPE = ViTConfig
PREFIX = "vision_model."
# A full `CLIPModel` checkpoint converts to its vision tower, which exports as a CLIPVisionModel.
HOLDS = {"CLIPModel": "CLIPVisionModel"}
# Parts of a `CLIPModel` that the vision tower does not use (the text tower, the contrastive
# projections and temperature); any other name still fails as unknown.
_CLIP_MODEL_UNUSED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")

# The block fields of CLIP's and SigLIP's ViTs (InternViT's differ).
PLAIN_BLOCKS = {"norm": "layer_norm", "qkv_bias": True, "qk_norm": False, "layer_scale": False}
# HF activation name → mmjax activation name.
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}

# `transformers.CLIPVisionConfig` defaults, which apply to keys a config.json leaves out.
HF_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def _square(hf: dict[str, Any], key: str) -> int:
  """`image_size` / `patch_size` may be an int or an (h, w) pair; the ViT needs them square."""
  value = hf[key]
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"CLIP vision {key}={value!r} is not square; mmjax's ViT supports "
                       "square sizes only.")
    value = value[0]
  return int(value)


def config_from_hf(hf_config: dict[str, Any]) -> ViTConfig:
  """A `CLIPVisionModel` config.json (or a `CLIPModel` one, via its `vision_config`) → ViTConfig."""
  hf = {**HF_DEFAULTS, **hf_config.get("vision_config", hf_config)}
  if hf["num_channels"] != 3:
    raise ValueError(f"CLIP vision num_channels={hf['num_channels']} is not supported; valid: 3.")
  if hf["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"CLIP vision hidden_act={hf['hidden_act']!r} is not supported; valid: "
                     f"{sorted(ACTIVATIONS)}.")
  return ViTConfig(
      image_size=_square(hf, "image_size"),
      patch_size=_square(hf, "patch_size"),
      width=hf["hidden_size"],
      depth=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      mlp_dim=hf["intermediate_size"],
      act=ACTIVATIONS[hf["hidden_act"]],
      norm_eps=hf["layer_norm_eps"],
      use_cls=True,
      patch_bias=False,
      pre_norm=True,
      position_embedding="learned",
  )


def _check_clip(config: ViTConfig) -> None:
  """Raises unless `config` describes a ViT that `CLIPVisionModel` can hold."""
  check_vit(config, {"use_cls": True, "patch_bias": False, "pre_norm": True,
                     "position_embedding": "learned", "stem": "patch", **PLAIN_BLOCKS},
            ACTIVATIONS, "CLIPVisionModel")


def check_vit(config: ViTConfig, fields: dict[str, Any], activations: dict[str, str],
              architecture: str) -> None:
  """Raises unless `config` has `fields` and one of the `activations` (HF → mmjax names)."""
  wrong = {k: getattr(config, k) for k, v in fields.items() if getattr(config, k) != v}
  if wrong:
    raise ValueError(f"ViTConfig fields {wrong} have no {architecture} equivalent; it needs "
                     f"{fields}.")
  if config.act not in activations.values():
    raise ValueError(f"ViT act={config.act!r} has no {architecture} equivalent; valid: "
                     f"{sorted(activations.values())}.")


def config_to_hf(config: ViTConfig, architecture: str) -> dict[str, Any]:
  """ViTConfig → a config.json dict that `transformers.CLIPVisionConfig` accepts."""
  if architecture != "CLIPVisionModel":
    raise ValueError(f"Architecture {architecture!r} is not handled by the CLIP vision converter; "
                     "valid: ['CLIPVisionModel'].")
  _check_clip(config)
  hf_act = {v: k for k, v in ACTIVATIONS.items()}
  return {
      "architectures": [architecture],
      "model_type": "clip_vision_model",
      "hidden_size": config.width,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.depth,
      "num_attention_heads": config.num_heads,
      "num_channels": 3,
      "image_size": config.image_size,
      "patch_size": config.patch_size,
      "hidden_act": hf_act[config.act],
      "layer_norm_eps": config.norm_eps,
      "dtype": config.param_dtype,
  }


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """The vision tower's tensors under bare names: drops a `CLIPModel`'s text tower and
  projections, and strips the `vision_model.` prefix of transformers-4.x-style (and `CLIPModel`)
  names; transformers-5.x `CLIPVisionModel` names pass through."""
  if "CLIPModel" in (hf_config.get("architectures") or []):
    tensors = {k: v for k, v in tensors.items() if not k.startswith(_CLIP_MODEL_UNUSED)}
  out: dict[str, Any] = {}
  for name, value in tensors.items():
    short = name.removeprefix(PREFIX)
    if short in out:
      raise ValueError(f"Tensor {short!r} appears both with and without the {PREFIX!r} prefix.")
    out[short] = value
  return out


# The names of a ViT block's tensors in CLIP's (and SigLIP's) checkpoints.
CLIP_BLOCK = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.out_proj", "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm",
              "ln1": "layer_norm1", "ln2": "layer_norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2",
              "ls1": "lambda_1", "ls2": "lambda_2"}


def block_rules(hf: str, path: tuple[str, ...], config: ViTConfig,
                names: dict[str, str] = CLIP_BLOCK) -> list[mapping.Rule]:
  """One `ViTBlock`'s tensors under `hf` (`names`: each mmjax part's HF name), with the options the
  config turns on: q/k/v biases, QK-norm, RMSNorm blocks (no bias), layer scale."""
  d, heads = config.width, config.num_heads
  head_shape = (heads, d // heads)
  rules = []
  for name in ("q", "k", "v"):
    rules += mapping.linear_rules(f"{hf}.{names[name]}", path + ("attn", name), (d,), head_shape,
                                  bias=config.qkv_bias)
  rules += mapping.linear_rules(f"{hf}.{names['o']}", path + ("attn", "o"), head_shape, (d,),
                                bias=True)
  if config.qk_norm:
    for name in ("q_norm", "k_norm"):
      rules += mapping.norm_rules(f"{hf}.{names[name]}", path + ("attn", name), bias=False)
  for name in ("ln1", "ln2"):
    rules += mapping.norm_rules(f"{hf}.{names[name]}", path + (name,),
                                bias=config.norm == "layer_norm")
  if config.layer_scale:
    rules += [mapping.Rule(f"{hf}.{names[name]}", path + (name,)) for name in ("ls1", "ls2")]
  rules += mapping.linear_rules(f"{hf}.{names['fc1']}", path + ("mlp", "fc1"), (d,),
                                (config.mlp_dim,), bias=True)
  rules += mapping.linear_rules(f"{hf}.{names['fc2']}", path + ("mlp", "fc2"), (config.mlp_dim,),
                                (d,), bias=True)
  return rules


def rules(config: ViTConfig) -> list[mapping.Rule]:
  """Every tensor of a transformers-5.x `CLIPVisionModel` safetensors checkpoint."""
  _check_clip(config)
  rules = [
      mapping.Rule("embeddings.class_embedding", ("cls",)),
      # torch conv weight [D, C, P, P] ↔ our kernel [P, P, C, D] (channels-last patches).
      mapping.Rule("embeddings.patch_embedding.weight", ("patch_kernel",),
                   lambda w: np.transpose(w, (2, 3, 1, 0)),
                   lambda k: np.transpose(k, (3, 2, 0, 1))),
      mapping.Rule("embeddings.position_embedding.weight", ("pos_embedding",)),
      *mapping.norm_rules("pre_layrnorm", ("pre_norm",)),
      *mapping.norm_rules("post_layernorm", ("post_norm",)),
  ]
  return rules + stack_rules(config, "encoder.layers")


def stack_rules(config: ViTConfig, prefix: str, names: dict[str, str] = CLIP_BLOCK
                ) -> list[mapping.Rule]:
  """Every block's tensors: HF's `{prefix}.N` ↔ mmjax's `blocks_{g}/layers_{j}` (N counts the
  blocks of all groups in order)."""
  out, layer = [], 0
  for group, size in enumerate(config.groups):
    for j in range(size):
      out += block_rules(f"{prefix}.{layer}", (f"blocks_{group}", f"layers_{j}"), config, names)
      layer += 1
  return out
