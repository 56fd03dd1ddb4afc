"""Hugging Face `InternVLForConditionalGeneration` ↔ mmjax `MLLM` with the InternVL tower (InternViT
on each tile, its class token dropped, 2× pixel unshuffle, the projector's LayerNorm), the
`mlp2x_gelu` projector (the rest of `multi_modal_projector`) and the Qwen2/LLaMA decoder.

Names as transformers 5 writes them: `vision_tower.…` (`mmjax.convert.internvit`),
`multi_modal_projector.{layer_norm, linear_1, linear_2}`, `language_model.model.…` and
`language_model.lm_head` (absent when tied, the default); `select_tensors` also reads the
in-memory names (`model.…`, `lm_head`). How many tiles an image is cut into is a processor
setting in Hugging Face (`min_patches`, `max_patches`) and a tower field in mmjax (`min_num`,
`max_num`): the conversion keeps the mmjax defaults, which a config can change.
"""
from typing import Any

from mmjax.convert import internvit
from mmjax.convert import llama
from mmjax.convert import mapping
from mmjax.convert import whole
from mmjax.models import connectors
from mmjax.models import mllm
from mmjax.models import towers

CONFIG_TYPE = mllm.MLLMConfig
ARCHITECTURE = "InternVLForConditionalGeneration"
VISION, PROJECTOR = "vision_tower.", "multi_modal_projector."
LANGUAGE, HEAD = "language_model.model.", "language_model.lm_head."
KEPT = tuple(VISION + k for k in internvit.KEPT)
_OTHER_NAMES = (("model.vision_tower.", VISION), ("model.multi_modal_projector.", PROJECTOR),
                ("model.language_model.", LANGUAGE), ("lm_head.", HEAD))
# `transformers.InternVLConfig` defaults, which apply to keys a config.json leaves out.
HF_DEFAULTS = {"image_token_id": 151667, "image_seq_length": 256, "downsample_ratio": 0.5,
               "projector_hidden_act": "gelu", "vision_feature_layer": -1,
               "vision_feature_select_strategy": "default", "tie_word_embeddings": True}


def config_from_hf(hf_config: dict[str, Any]) -> mllm.MLLMConfig:
  hf = {**HF_DEFAULTS, **hf_config}
  for key in ("vision_config", "text_config"):
    if not isinstance(hf.get(key), dict):
      raise ValueError(f"InternVL config.json has no {key} object.")
  checks = {"downsample_ratio": (hf["downsample_ratio"], (0.5,)),
            "projector_hidden_act": (hf["projector_hidden_act"], ("gelu",)),
            "vision_feature_select_strategy": (hf["vision_feature_select_strategy"], ("default",))}
  for key, (value, valid) in checks.items():
    if value not in valid:
      raise ValueError(f"InternVL {key}={value!r} is not supported; valid: {list(valid)}.")
  layer = hf["vision_feature_layer"]
  if not isinstance(layer, int):
    raise ValueError(f"InternVL vision_feature_layer={layer!r} (several layers concatenated) is "
                     "not supported; valid: one layer index.")
  vision = {**internvit.HF_DEFAULTS, **hf["vision_config"]}
  if layer == -1 and not vision["use_mean_pooling"]:
    raise ValueError("InternVL vision_feature_layer=-1 with use_mean_pooling=False reads the "
                     "ViT's final LayerNorm, which mmjax's tower does not apply; not supported.")
  # The top-level flag ties the head (transformers' InternVLForConditionalGeneration).
  text = {"model_type": "qwen2", **hf["text_config"],
          "tie_word_embeddings": hf["tie_word_embeddings"]}
  tower = towers.InternVLTowerConfig(vit=internvit.config_from_hf(vision), select_layer=layer)
  return mllm.MLLMConfig(tower=tower, llm=llama.config_from_hf(text),
                         connector=connectors.ProjectorConfig("mlp2x_gelu"),
                         image_token_id=int(hf["image_token_id"]), image_token_in_vocab=True)


override = whole.override


def _check(config: Any) -> None:
  if not (isinstance(config, mllm.MLLMConfig)
          and isinstance(config.tower, towers.InternVLTowerConfig)
          and config.connector == connectors.ProjectorConfig("mlp2x_gelu")):
    raise ValueError(f"{ARCHITECTURE} holds an MLLM of the InternVL tower and the mlp2x_gelu "
                     "projector.")


def config_to_hf(config: mllm.MLLMConfig, architecture: str) -> dict[str, Any]:
  if architecture != ARCHITECTURE:
    raise ValueError(f"Architecture {architecture!r} is not handled by the InternVL converter; "
                     f"valid: [{ARCHITECTURE!r}].")
  _check(config)
  vision = internvit.config_to_hf(config.tower.vit, internvit.ARCHITECTURE)
  text = llama.text_config_to_hf(config.llm)
  del vision["architectures"]
  return {"architectures": [architecture], "model_type": "internvl", "vision_config": vision,
          "text_config": text, "image_token_id": config.image_token_id,
          "image_seq_length": config.tower.tokens_per_tile, "downsample_ratio": 0.5,
          "projector_hidden_act": "gelu", "vision_feature_layer": config.tower.select_layer,
          "vision_feature_select_strategy": "default",
          "tie_word_embeddings": config.llm.tie_embeddings, "dtype": config.llm.param_dtype}


def with_kept(hf_config: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
  internvit.with_kept(hf_config["vision_config"], kept, VISION)
  return hf_config


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """Every tensor under the name transformers 5 writes to disk; a tied head's copy (which
  `state_dict()` lists, the saved file does not) left out."""
  out = whole.renamed(tensors, _OTHER_NAMES)
  if {**HF_DEFAULTS, **hf_config}["tie_word_embeddings"]:
    out.pop(HEAD + "weight", None)
  return out


def rules(config: mllm.MLLMConfig) -> list[mapping.Rule]:
  _check(config)
  d_in, d = config.tower.width, config.llm.width
  return (mapping.moved(internvit.rules(config.tower.vit), lambda n: VISION + n, ("tower", "vit"))
          + mapping.norm_rules(PROJECTOR + "layer_norm", ("tower", "norm"))
          + mapping.linear_rules(PROJECTOR + "linear_1", ("projector", "linear_0"), (d_in,), (d,),
                                 bias=True)
          + mapping.linear_rules(PROJECTOR + "linear_2", ("projector", "linear_1"), (d,), (d,),
                                 bias=True)
          + mapping.moved(llama.rules(config.llm), lambda n: "language_model." + n, ("llm",)))
