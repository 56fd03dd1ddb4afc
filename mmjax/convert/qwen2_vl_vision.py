"""Hugging Face `Qwen2VisionTransformerPretrainedModel` (Qwen2-VL's vision tower) ↔ mmjax
`NativeViT`.

The reference fuses q, k and v into one `attn.qkv` linear; `select_tensors` splits it into three
names the rules map one to one, and `join_tensors` fuses them back on export. The 3D patch
convolution (kernel = stride) is a linear map of the flattened (channel, frame, row, column) cube.
"""
from typing import Any

import numpy as np

from mmjax.convert import mapping
from mmjax.models.native_vit import NativeViTConfig

CONFIG_TYPE = NativeViTConfig
ARCHITECTURE = "Qwen2VisionTransformerPretrainedModel"
_QKV = "attn.qkv"

# `transformers.Qwen2VLVisionConfig` defaults, which apply to keys a config.json leaves out.
HF_DEFAULTS = {
    "depth": 32, "embed_dim": 1280, "hidden_size": 3584, "hidden_act": "quick_gelu",
    "mlp_ratio": 4, "num_heads": 16, "in_channels": 3, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
}
ACTIVATIONS = ("quick_gelu", "gelu")


def config_from_hf(hf_config: dict[str, Any]) -> NativeViTConfig:
  """A vision config.json (or a full Qwen2-VL one, via its `vision_config`) → NativeViTConfig."""
  hf = {**HF_DEFAULTS, **hf_config.get("vision_config", hf_config)}
  if hf["in_channels"] != 3:
    raise ValueError(f"Qwen2-VL vision in_channels={hf['in_channels']} is not supported; "
                     "valid: 3.")
  if hf["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"Qwen2-VL vision hidden_act={hf['hidden_act']!r} is not supported; valid: "
                     f"{list(ACTIVATIONS)}.")
  return NativeViTConfig(
      patch_size=hf["patch_size"], temporal_patch_size=hf["temporal_patch_size"],
      width=hf["embed_dim"], depth=hf["depth"], num_heads=hf["num_heads"],
      mlp_dim=int(hf["embed_dim"] * hf["mlp_ratio"]), act=hf["hidden_act"],
      rope_theta=float(hf["rope_parameters"]["rope_theta"]),
      merge_size=hf["spatial_merge_size"], out_width=hf["hidden_size"])


def config_to_hf(config: NativeViTConfig, architecture: str) -> dict[str, Any]:
  if architecture != ARCHITECTURE:
    raise ValueError(f"Architecture {architecture!r} is not handled by the Qwen2-VL vision "
                     f"converter; valid: [{ARCHITECTURE!r}].")
  if config.mlp_dim % config.width or config.norm_eps != 1e-6:
    raise ValueError(f"NativeViTConfig mlp_dim={config.mlp_dim} (must be a multiple of width="
                     f"{config.width}) or norm_eps={config.norm_eps} (must be 1e-6) has no "
                     "Qwen2-VL equivalent.")
  return {
      "architectures": [architecture], "model_type": "qwen2_vl_vision",
      "depth": config.depth, "embed_dim": config.width, "hidden_size": config.out_width,
      "hidden_act": config.act, "mlp_ratio": config.mlp_dim // config.width,
      "num_heads": config.num_heads, "in_channels": 3, "patch_size": config.patch_size,
      "spatial_merge_size": config.merge_size,
      "temporal_patch_size": config.temporal_patch_size,
      "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "axial"},
      "dtype": config.param_dtype,
  }


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """Splits every fused `attn.qkv` weight / bias into `attn.q`, `attn.k`, `attn.v`; strips the
  `visual.` prefix of a full Qwen2-VL checkpoint's vision tower."""
  out = {}
  for name, value in tensors.items():
    name = name.removeprefix("visual.")
    if f".{_QKV}." in name:
      head, kind = name.rsplit(f".{_QKV}.", 1)
      for part, piece in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
        out[f"{head}.attn.{part}.{kind}"] = piece
    else:
      out[name] = value
  return out


def join_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of `select_tensors`: fuses `attn.q/k/v` back into `attn.qkv`."""
  out = {k: v for k, v in tensors.items() if ".attn.q." not in k and ".attn.k." not in k
         and ".attn.v." not in k}
  for name in tensors:
    if ".attn.q." in name:
      head, kind = name.split(".attn.q.")
      out[f"{head}.{_QKV}.{kind}"] = np.concatenate(
          [tensors[f"{head}.attn.{p}.{kind}"] for p in "qkv"], axis=0)
  return out


def rules(config: NativeViTConfig) -> list[mapping.Rule]:
  d, heads = config.width, config.num_heads
  head_shape = (heads, d // heads)
  groups = config.merge_size ** 2
  rules = [
      # torch Conv3d weight [D, C, T, P, P] ↔ our kernel [C·T·P·P, D].
      mapping.Rule("patch_embed.proj.weight", ("patch_embed", "kernel"),
                   lambda w: w.reshape(w.shape[0], -1).T,
                   lambda kern: kern.T.reshape(d, 3, config.temporal_patch_size,
                                               config.patch_size, config.patch_size)),
      *mapping.norm_rules("merger.ln_q", ("merger_norm",)),
      *mapping.linear_rules("merger.mlp.0", ("merger_fc1",), (groups * d,), (groups * d,), True),
      *mapping.linear_rules("merger.mlp.2", ("merger_fc2",), (groups * d,), (config.out_width,),
                            True),
  ]
  for i in range(config.depth):
    hf, path = f"blocks.{i}", ("blocks", f"layers_{i}")
    for name in "qkv":
      rules += mapping.linear_rules(f"{hf}.attn.{name}", path + ("attn", name), (d,), head_shape,
                                    bias=True)
    rules += mapping.linear_rules(f"{hf}.attn.proj", path + ("attn", "o"), head_shape, (d,),
                                  bias=True)
    rules += mapping.norm_rules(f"{hf}.norm1", path + ("ln1",))
    rules += mapping.norm_rules(f"{hf}.norm2", path + ("ln2",))
    rules += mapping.linear_rules(f"{hf}.mlp.fc1", path + ("mlp", "fc1"), (d,),
                                  (config.mlp_dim,), bias=True)
    rules += mapping.linear_rules(f"{hf}.mlp.fc2", path + ("mlp", "fc2"), (config.mlp_dim,),
                                  (d,), bias=True)
  return rules
