"""What the converters of whole multimodal models share: the tensor names of other namings, and
overrides (`--scan_layers`, `--param_dtype`; a plan's compute settings) that apply to the
tower's ViT and the decoder alike."""
import dataclasses
from collections.abc import Sequence
from typing import Any

from mmjax.models import mllm


def renamed(tensors: dict[str, Any], prefixes: Sequence[tuple[str, str]]) -> dict[str, Any]:
  """`tensors` with each name's first matching prefix (other, ours) replaced by ours."""
  out: dict[str, Any] = {}
  for name, value in tensors.items():
    new = next((to + name[len(old):] for old, to in prefixes if name.startswith(old)), name)
    if new in out:
      raise ValueError(f"Tensor {new!r} appears under two names.")
    out[new] = value
  return out


def override(config: mllm.MLLMConfig, **fields: Any) -> mllm.MLLMConfig:
  """`config` with `fields` (those not None: `scan_layers`, `param_dtype`, `dtype`, `remat`, …)
  replaced in both its tower's `vit` and its decoder."""
  fields = {k: v for k, v in fields.items() if v is not None}
  vit = dataclasses.replace(config.tower.vit, **fields)
  return dataclasses.replace(config, tower=dataclasses.replace(config.tower, vit=vit),
                             llm=dataclasses.replace(config.llm, **fields))
