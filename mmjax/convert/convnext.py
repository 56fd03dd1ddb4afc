"""Hugging Face `ConvNextModel` ↔ `mmjax.models.convnext.ConvNeXt`."""
from typing import Any

import numpy as np

from mmjax.convert import mapping
from mmjax.models import convnext

CONFIG_TYPE = convnext.ConvNeXtConfig

# HF `hidden_act` → mmjax activation, and the HF name written back for each.
_ACTS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
         "quick_gelu": "quick_gelu", "silu": "silu", "swish": "silu", "relu": "relu"}
_HF_ACTS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu",
            "silu": "silu", "relu": "relu"}
_HF_NORM_EPS = 1e-6  # HF hard-codes this epsilon in every LayerNorm but the pooling one.


def config_from_hf(hf_config: dict[str, Any]) -> convnext.ConvNeXtConfig:
  """A HF ConvNextConfig `config.json` dict → ConvNeXtConfig (drop-path is ignored)."""
  act = hf_config.get("hidden_act", "gelu")
  if act not in _ACTS:
    raise ValueError(f"Unsupported ConvNeXt hidden_act {act!r}; valid: {sorted(_ACTS)}.")
  if hf_config.get("num_channels", 3) != 3:
    raise ValueError(f"Unsupported ConvNeXt num_channels={hf_config['num_channels']}; valid: 3.")
  if hf_config.get("patch_size", convnext.STEM_PATCH) != convnext.STEM_PATCH:
    raise ValueError(f"Unsupported ConvNeXt patch_size={hf_config['patch_size']}; "
                     f"valid: {convnext.STEM_PATCH}.")
  widths = tuple(hf_config.get("hidden_sizes", (96, 192, 384, 768)))
  depths = tuple(hf_config.get("depths", (3, 3, 9, 3)))
  num_stages = hf_config.get("num_stages", len(widths))
  if not len(widths) == len(depths) == num_stages:
    raise ValueError(f"ConvNeXt hidden_sizes={list(widths)}, depths={list(depths)} and "
                     f"num_stages={num_stages} disagree on the number of stages.")
  return convnext.ConvNeXtConfig(
      widths=widths, depths=depths, act=_ACTS[act], norm_eps=_HF_NORM_EPS,
      final_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
      layer_scale_init=hf_config.get("layer_scale_init_value", 1e-6))


def config_to_hf(config: convnext.ConvNeXtConfig, architecture: str) -> dict[str, Any]:
  """ConvNeXtConfig → a `config.json` dict that `transformers.ConvNextConfig` accepts."""
  if config.norm_eps != _HF_NORM_EPS:
    raise ValueError(f"ConvNeXt norm_eps={config.norm_eps} has no Hugging Face equivalent; "
                     f"valid: {_HF_NORM_EPS}.")
  return {
      "architectures": [architecture],
      "model_type": "convnext",
      "num_channels": 3,
      "patch_size": convnext.STEM_PATCH,
      "num_stages": config.num_stages,
      "hidden_sizes": list(config.widths),
      "depths": list(config.depths),
      "hidden_act": _HF_ACTS[config.act],
      "layer_norm_eps": config.final_norm_eps,
      "layer_scale_init_value": config.layer_scale_init,
      "drop_path_rate": 0.0,
  }


def _conv(hf: str, path: tuple[str, ...], kernel: str = "kernel",
          bias: str = "bias") -> list[mapping.Rule]:
  """A torch Conv2d (weight [out, in/groups, kh, kw]) as a flax kernel [kh, kw, in/groups, out]."""
  return [mapping.Rule(f"{hf}.weight", path + (kernel,),
                       lambda w: np.transpose(w, (2, 3, 1, 0)),
                       lambda k: np.transpose(k, (3, 2, 0, 1))),
          mapping.Rule(f"{hf}.bias", path + (bias,))]


def _block(hf: str, path: tuple[str, ...], width: int, layer_scale: bool) -> list[mapping.Rule]:
  rules = _conv(f"{hf}.dwconv", path, "dw_kernel", "dw_bias")
  rules += mapping.norm_rules(f"{hf}.layernorm", path + ("norm",))
  hidden = convnext.MLP_RATIO * width
  rules += mapping.linear_rules(f"{hf}.pwconv1", path + ("fc1",), (width,), (hidden,), True)
  rules += mapping.linear_rules(f"{hf}.pwconv2", path + ("fc2",), (hidden,), (width,), True)
  if layer_scale:
    rules.append(mapping.Rule(f"{hf}.layer_scale_parameter", path + ("layer_scale",)))
  return rules


def rules(config: convnext.ConvNeXtConfig) -> list[mapping.Rule]:
  """Every tensor of a `ConvNextModel` state dict, in the unrolled mmjax layout."""
  out = _conv("embeddings.patch_embeddings", ("stem",))
  out += mapping.norm_rules("embeddings.layernorm", ("stem_norm",))
  for s, (width, depth) in enumerate(zip(config.widths, config.depths)):
    stage = f"encoder.stages.{s}"
    if s > 0:
      out += mapping.norm_rules(f"{stage}.downsampling_layer.0", (f"down_norm_{s}",))
      out += _conv(f"{stage}.downsampling_layer.1", (f"down_{s}",))
    for i in range(depth):
      out += _block(f"{stage}.layers.{i}", (f"stage_{s}", f"layers_{i}"), width,
                    config.layer_scale_init > 0)
  out += mapping.norm_rules("layernorm", ("final_norm",))
  return out
