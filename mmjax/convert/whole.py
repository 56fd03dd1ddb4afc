"""What the converters of whole multimodal models share: the tensor names of other namings, and
the `--scan_layers` / `--param_dtype` overrides, which apply to the tower's ViT and the decoder."""
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


def override(config: mllm.MLLMConfig, *, scan_layers: bool | None = None,
             param_dtype: str | None = None, **llm_fields: Any) -> mllm.MLLMConfig:
  """`config` with the layout and storage dtype of both its tower's `vit` and its decoder
  replaced (and `llm_fields` of the decoder)."""
  parts = {k: v for k, v in (("scan_layers", scan_layers), ("param_dtype", param_dtype))
           if v is not None}
  vit = dataclasses.replace(config.tower.vit, **parts)
  return dataclasses.replace(config, tower=dataclasses.replace(config.tower, vit=vit),
                             llm=dataclasses.replace(config.llm, **parts, **llm_fields))
