"""Hugging Face `LlavaForConditionalGeneration` (LLaVA-1.5) ↔ mmjax `MLLM` with the ViT tower,
the MLP projector and the LLaMA/Qwen2 decoder.

The names are those transformers 5 writes to disk: `vision_tower.…` (a CLIPVisionModel's),
`multi_modal_projector.linear_{1,2}`, `language_model.model.…` (a LlamaModel's) and
`language_model.lm_head`. `select_tensors` also reads the public checkpoints' names
(llava-hf/llava-1.5-*-hf, saved by transformers 4.x: `vision_tower.vision_model.…`) and the
in-memory names of transformers 5 (`model.vision_tower.…`, `model.language_model.…`, `lm_head`).
The tower reads hidden state `vision_feature_layer` (before CLIP's `post_layernorm`, which no LLaVA
layer applies): those two tensors are kept beside the parameters (`KEPT`) so the export gives them
back unchanged.
"""
from typing import Any

from mmjax.convert import clip_vision
from mmjax.convert import llama
from mmjax.convert import mapping
from mmjax.convert import whole
from mmjax.models import connectors
from mmjax.models import mllm
from mmjax.models import towers

CONFIG_TYPE = mllm.MLLMConfig
ARCHITECTURE = "LlavaForConditionalGeneration"
VISION, PROJECTOR = "vision_tower.", "multi_modal_projector."
LANGUAGE, HEAD = "language_model.model.", "language_model.lm_head."
KEPT = (VISION + "post_layernorm.",)
# Another naming's prefix → the one written to disk; the first match renames a tensor.
_OTHER_NAMES = (("model.vision_tower.vision_model.", VISION), ("vision_tower.vision_model.", VISION),
                ("model.vision_tower.", VISION), ("model.multi_modal_projector.", PROJECTOR),
                ("model.language_model.", LANGUAGE), ("lm_head.", HEAD))
SELECT_STRATEGIES = {"default": "patch", "full": "cls_patch"}  # HF's → the ViT tower's.
PROJECTOR_ACTS = ("gelu",)
# `transformers.LlavaConfig` defaults, which apply to keys a config.json leaves out.
HF_DEFAULTS = {"image_token_index": 32000, "projector_hidden_act": "gelu",
               "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
               "multimodal_projector_bias": True, "image_seq_length": 576}


def _image_token(hf: dict[str, Any]) -> int:
  """transformers 5 writes `image_token_id` in some configs, `image_token_index` in others."""
  return int(hf.get("image_token_id", hf.get("image_token_index", 32000)))


def config_from_hf(hf_config: dict[str, Any]) -> mllm.MLLMConfig:
  hf = {**HF_DEFAULTS, **hf_config}
  for key in ("vision_config", "text_config"):
    if not isinstance(hf.get(key), dict):
      raise ValueError(f"LLaVA config.json has no {key} object.")
  layer = hf["vision_feature_layer"]
  if not isinstance(layer, int):
    raise ValueError(f"LLaVA vision_feature_layer={layer!r} (several layers concatenated) is not "
                     "supported; valid: one layer index.")
  strategy = hf["vision_feature_select_strategy"]
  if strategy not in SELECT_STRATEGIES:
    raise ValueError(f"LLaVA vision_feature_select_strategy={strategy!r} is not supported; "
                     f"valid: {sorted(SELECT_STRATEGIES)}.")
  if hf["projector_hidden_act"] not in PROJECTOR_ACTS or not hf["multimodal_projector_bias"]:
    raise ValueError(f"LLaVA projector_hidden_act={hf['projector_hidden_act']!r}, "
                     f"multimodal_projector_bias={hf['multimodal_projector_bias']} is not "
                     f"supported; valid: act in {PROJECTOR_ACTS} with biases (mlp2x_gelu).")
  vision = hf["vision_config"]
  if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
    raise ValueError(f"LLaVA vision tower {vision.get('model_type')!r} is not supported; "
                     "valid: 'clip_vision_model'.")
  # LlavaConfig ties the head when either level says so (its top-level flag takes the text's).
  text = {"model_type": "llama", **hf["text_config"]}
  text["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings")) or bool(
      text.get("tie_word_embeddings"))
  tower = towers.ViTTowerConfig(vit=clip_vision.config_from_hf(vision), select_layer=layer,
                                select_feature=SELECT_STRATEGIES[strategy])
  return mllm.MLLMConfig(tower=tower, llm=llama.config_from_hf(text),
                         connector=connectors.ProjectorConfig("mlp2x_gelu"),
                         image_token_id=_image_token(hf), image_token_in_vocab=True)


override = whole.override


def _check(config: Any) -> None:
  if not isinstance(config, mllm.MLLMConfig) or not isinstance(
      config.tower, towers.ViTTowerConfig) or not isinstance(config.connector,
                                                             connectors.ProjectorConfig):
    raise ValueError(f"{ARCHITECTURE} holds an MLLM of the ViT tower and the MLP projector; got "
                     f"{type(config).__name__}.")
  if config.connector.kind != "mlp2x_gelu":
    raise ValueError(f"{ARCHITECTURE}'s projector is mlp2x_gelu; got {config.connector.kind!r}.")


def config_to_hf(config: mllm.MLLMConfig, architecture: str) -> dict[str, Any]:
  if architecture != ARCHITECTURE:
    raise ValueError(f"Architecture {architecture!r} is not handled by the LLaVA converter; "
                     f"valid: [{ARCHITECTURE!r}].")
  _check(config)
  vision = clip_vision.config_to_hf(config.tower.vit, "CLIPVisionModel")
  text = llama.text_config_to_hf(config.llm)
  del vision["architectures"]
  strategy = {v: k for k, v in SELECT_STRATEGIES.items()}[config.tower.select_feature]
  return {
      "architectures": [architecture], "model_type": "llava", "vision_config": vision,
      "text_config": text, "image_token_index": config.image_token_id,
      "image_seq_length": config.max_visual_tokens, "projector_hidden_act": "gelu",
      "multimodal_projector_bias": True, "vision_feature_layer": config.tower.select_layer,
      "vision_feature_select_strategy": strategy,
      "tie_word_embeddings": config.llm.tie_embeddings, "dtype": config.llm.param_dtype,
  }


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """Every tensor under the name transformers 5 writes to disk."""
  del hf_config
  return whole.renamed(tensors, _OTHER_NAMES)


def _language_name(name: str) -> str:
  """A LlamaForCausalLM's name (`model.…`, `lm_head.…`) inside the LLaVA."""
  return "language_model." + name


def rules(config: mllm.MLLMConfig) -> list[mapping.Rule]:
  _check(config)
  vit = [r for r in clip_vision.rules(config.tower.vit) if r.path[0] != "post_norm"]
  d_in, d = config.tower.width, config.llm.width
  return (mapping.moved(vit, lambda n: VISION + n, ("tower", "vit"))
          + mapping.linear_rules(PROJECTOR + "linear_1", ("projector", "linear_0"), (d_in,), (d,),
                                 bias=True)
          + mapping.linear_rules(PROJECTOR + "linear_2", ("projector", "linear_1"), (d,), (d,),
                                 bias=True)
          + mapping.moved(llama.rules(config.llm), _language_name, ("llm",)))
