"""Hugging Face `Qwen2VLForConditionalGeneration` ↔ mmjax `MLLM` with the Qwen2-VL tower (the
native-resolution ViT and its merger), the identity connector and the Qwen2 decoder with M-RoPE.

The names are those transformers 5 writes to disk and the public checkpoints hold: `visual.…` (the
vision tower's, `mmjax.convert.qwen2_vl_vision`), `model.…` (a Qwen2Model's) and `lm_head`;
`select_tensors` also reads transformers 5's in-memory names (`model.visual.…`,
`model.language_model.…`). The merger maps to the decoder's width, so the connector is the
identity. How many patches a row holds is a processor setting in Hugging Face (`max_pixels`) and a
model field in mmjax (`Qwen2VLTowerConfig.max_patches`): the conversion keeps the mmjax default,
which a config can change without touching the weights.
"""
import dataclasses
from typing import Any

import numpy as np

from mmjax.convert import llama
from mmjax.convert import mapping
from mmjax.convert import whole
from mmjax.convert import qwen2_vl_vision
from mmjax.models import connectors
from mmjax.models import mllm
from mmjax.models import towers

CONFIG_TYPE = mllm.MLLMConfig
ARCHITECTURE = "Qwen2VLForConditionalGeneration"
VISION, LANGUAGE = "visual.", "model."
# Another naming's prefix → the one written to disk; the first match renames a tensor.
_OTHER_NAMES = (("model.visual.", VISION), ("model.language_model.", LANGUAGE))


def config_from_hf(hf: dict[str, Any]) -> mllm.MLLMConfig:
  for key in ("vision_config", "text_config"):
    if not isinstance(hf.get(key), dict):
      raise ValueError(f"Qwen2-VL config.json has no {key} object.")
  text = hf["text_config"]
  rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
  sections = rope.get("mrope_section")
  if not sections:
    raise ValueError("Qwen2-VL text_config has no rope_parameters.mrope_section.")
  llm = llama.config_from_hf({**text, "model_type": "qwen2", "rope_parameters": {
      k: v for k, v in rope.items() if k != "mrope_section"},
      "tie_word_embeddings": hf.get("tie_word_embeddings", text.get("tie_word_embeddings"))})
  llm = dataclasses.replace(llm, mrope_sections=tuple(int(s) for s in sections))
  vit = qwen2_vl_vision.config_from_hf(hf["vision_config"])
  if vit.out_width != llm.width:
    raise ValueError(f"Qwen2-VL vision_config.hidden_size={vit.out_width} (the merger's output) "
                     f"differs from the decoder's hidden_size={llm.width}.")
  return mllm.MLLMConfig(tower=towers.Qwen2VLTowerConfig(vit=vit), llm=llm,
                         connector=connectors.ProjectorConfig("identity"),
                         image_token_id=int(hf.get("image_token_id", 151655)),
                         image_token_in_vocab=True)


override = whole.override


def _check(config: Any) -> None:
  if not (isinstance(config, mllm.MLLMConfig)
          and isinstance(config.tower, towers.Qwen2VLTowerConfig)
          and isinstance(config.connector, connectors.ProjectorConfig)
          and config.connector.kind == "identity" and config.llm.mrope_sections):
    raise ValueError(f"{ARCHITECTURE} holds an MLLM of the Qwen2-VL tower, the identity "
                     "connector and an M-RoPE decoder.")


def config_to_hf(config: mllm.MLLMConfig, architecture: str) -> dict[str, Any]:
  if architecture != ARCHITECTURE:
    raise ValueError(f"Architecture {architecture!r} is not handled by the Qwen2-VL converter; "
                     f"valid: [{ARCHITECTURE!r}].")
  _check(config)
  vision = qwen2_vl_vision.config_to_hf(config.tower.vit, qwen2_vl_vision.ARCHITECTURE)
  text = llama.config_to_hf(config.llm, "Qwen2ForCausalLM")
  del vision["architectures"], text["architectures"]
  text["rope_parameters"]["mrope_section"] = list(config.llm.mrope_sections)
  vision["model_type"], text["model_type"] = "qwen2_vl", "qwen2_vl_text"
  return {"architectures": [architecture], "model_type": "qwen2_vl", "vision_config": vision,
          "text_config": text, "image_token_id": config.image_token_id,
          "tie_word_embeddings": config.llm.tie_embeddings, "dtype": config.llm.param_dtype}


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """Every tensor under the name transformers 5 writes to disk, the vision tower's fused `qkv`
  split as its converter splits it."""
  out = whole.renamed(tensors, _OTHER_NAMES)
  vision = {k[len(VISION):]: v for k, v in out.items() if k.startswith(VISION)}
  rest = {k: v for k, v in out.items() if not k.startswith(VISION)}
  split = qwen2_vl_vision.select_tensors(hf_config, vision)
  return {**rest, **{VISION + k: v for k, v in split.items()}}


def join_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  vision = {k[len(VISION):]: v for k, v in tensors.items() if k.startswith(VISION)}
  rest = {k: v for k, v in tensors.items() if not k.startswith(VISION)}
  return {**rest, **{VISION + k: v for k, v in qwen2_vl_vision.join_tensors(vision).items()}}


def rules(config: mllm.MLLMConfig) -> list[mapping.Rule]:
  _check(config)
  return (mapping.moved(qwen2_vl_vision.rules(config.tower.vit), lambda n: VISION + n,
                        ("tower", "vit"))
          + mapping.moved(llama.rules(config.llm), lambda n: n, ("llm",)))
