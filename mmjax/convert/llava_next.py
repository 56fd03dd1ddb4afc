"""Hugging Face `LlavaNextForConditionalGeneration` (LLaVA-NeXT, AnyRes) and
`LlavaOnevisionForConditionalGeneration` ↔ mmjax `MLLM` with the AnyRes tower
(`towers.OneVisionTowerConfig`: the ViT, the MLP projector on every crop token, the learned
newline), the identity connector and the LLaMA/Qwen2 decoder.

The two differ in their defaults and tower: LLaVA-NeXT reads a CLIP ViT's hidden state −2 without
its class token ("default") and keeps the whole unpadded map; LLaVA-OneVision reads SigLIP's last
hidden state ("full": SigLIP has no class token) and shrinks a map over `anyres_max_<n>` crops
(`vision_aspect_ratio`). The canvases are the checkpoint's `image_grid_pinpoints`.

Names are those transformers 5 writes to disk: `vision_tower.…`, `multi_modal_projector.linear_
{1,2}`, `image_newline`, `language_model.model.…`, `language_model.lm_head`; `select_tensors`
also reads transformers 4.x names (`vision_tower.vision_model.…`) and transformers 5's in-memory
ones (`model.…`, `lm_head`). The ViT's `post_layernorm` (and SigLIP's attention-pooling head),
which no layer of these models applies, are kept beside the parameters (`KEPT`) for the export.
"""
import re
from typing import Any

from mmjax.convert import clip_vision
from mmjax.convert import llama
from mmjax.convert import mapping
from mmjax.convert import siglip_vision
from mmjax.convert import whole
from mmjax.models import connectors
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models.towers import onevision

CONFIG_TYPE = mllm.MLLMConfig
NEXT, ONEVISION = "LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"
ARCHITECTURES = (NEXT, ONEVISION)
VISION, PROJECTOR, NEWLINE = "vision_tower.", "multi_modal_projector.", "image_newline"
LANGUAGE, HEAD = "language_model.model.", "language_model.lm_head."
KEPT = (VISION + "post_layernorm.", VISION + "head.")
_OTHER_NAMES = (("model.vision_tower.vision_model.", VISION), ("vision_tower.vision_model.", VISION),
                ("model.vision_tower.", VISION), ("model.multi_modal_projector.", PROJECTOR),
                ("model.image_newline", NEWLINE), ("model.language_model.", LANGUAGE),
                ("lm_head.", HEAD))
# transformers' config defaults of each architecture, for keys a config.json leaves out.
HF_DEFAULTS = {
    NEXT: {"model_type": "llava_next", "image_token_index": 32000,
           "vision_feature_select_strategy": "default", "vision_feature_layer": -2,
           "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
           "projector_hidden_act": "gelu", "multimodal_projector_bias": True},
    ONEVISION: {"model_type": "llava_onevision", "image_token_index": 151646,
                "video_token_index": 151647, "vision_feature_select_strategy": "full",
                "vision_feature_layer": -1, "vision_aspect_ratio": "anyres_max_9",
                "image_grid_pinpoints": [[384 * r, 384 * c] for r in range(1, 7)
                                         for c in range(1, 7)],
                "projector_hidden_act": "gelu", "multimodal_projector_bias": True},
}
# The vision tower's model type → its converter; the select strategy each ViT allows (the tower
# drops a class token and keeps every patch token).
VISION_CONVERTERS = {"clip_vision_model": clip_vision, "siglip_vision_model": siglip_vision}
STRATEGIES = {"clip_vision_model": "default", "siglip_vision_model": "full"}


def _architecture(hf: dict[str, Any]) -> str:
  arch = (hf.get("architectures") or [NEXT])[0]
  if arch not in ARCHITECTURES:
    raise ValueError(f"Architecture {arch!r} is not handled by the LLaVA-NeXT converter; "
                     f"valid: {list(ARCHITECTURES)}.")
  return arch


def _anyres_max(aspect: Any) -> int:
  match = re.fullmatch(r"anyres_max_(\d+)", str(aspect))
  if not match:
    raise ValueError(f"LLaVA-OneVision vision_aspect_ratio={aspect!r} is not supported; valid: "
                     "'anyres_max_<n>'.")
  return int(match.group(1))


def config_from_hf(hf_config: dict[str, Any]) -> mllm.MLLMConfig:
  arch = _architecture(hf_config)
  hf = {**HF_DEFAULTS[arch], **hf_config}
  for key in ("vision_config", "text_config"):
    if not isinstance(hf.get(key), dict):
      raise ValueError(f"{arch} config.json has no {key} object.")
  vision = hf["vision_config"]
  kind = vision.get("model_type", "clip_vision_model")
  if kind not in VISION_CONVERTERS:
    raise ValueError(f"{arch} vision tower {kind!r} is not supported; valid: "
                     f"{sorted(VISION_CONVERTERS)}.")
  layer, strategy = hf["vision_feature_layer"], hf["vision_feature_select_strategy"]
  if not isinstance(layer, int):
    raise ValueError(f"{arch} vision_feature_layer={layer!r} (several layers concatenated) is "
                     "not supported; valid: one layer index.")
  if strategy != STRATEGIES[kind]:
    raise ValueError(f"{arch} vision_feature_select_strategy={strategy!r} with a {kind} is not "
                     f"supported; valid: {STRATEGIES[kind]!r} (every patch token, no class token).")
  if hf["projector_hidden_act"] != "gelu" or not hf["multimodal_projector_bias"]:
    raise ValueError(f"{arch} projector_hidden_act={hf['projector_hidden_act']!r}, "
                     f"multimodal_projector_bias={hf['multimodal_projector_bias']} is not "
                     "supported; valid: 'gelu' with biases (mlp2x_gelu).")
  vit = VISION_CONVERTERS[kind].config_from_hf(vision)
  # The top-level flag ties the head; LlavaOnevisionConfig also takes the text config's.
  tie = bool(hf.get("tie_word_embeddings")) or (
      arch == ONEVISION and bool(hf["text_config"].get("tie_word_embeddings")))
  llm = llama.config_from_hf({"model_type": "llama", **hf["text_config"],
                              "tie_word_embeddings": tie})
  pinpoints = tuple(tuple(int(x) for x in p) for p in hf["image_grid_pinpoints"])
  anyres_max = _anyres_max(hf["vision_aspect_ratio"]) if arch == ONEVISION else 0
  crop = int(vision.get("image_size", vit.image_size))  # The crops' side (SigLIP: 384 of 378).
  policy = onevision.anyres_crops(crop, vit.patch_size, 1, anyres_max, pinpoints)
  tower = towers.OneVisionTowerConfig(
      vit=vit, select_layer=layer, projector="mlp2x_gelu", out_width=llm.width,
      max_crops_in=policy.max_crops_in, budget=policy.budget, anyres_grid=1,
      anyres_max=anyres_max, pinpoints=pinpoints, crop=crop if crop != vit.image_size else 0)
  return mllm.MLLMConfig(tower=tower, llm=llm, connector=connectors.ProjectorConfig("identity"),
                         image_token_id=int(hf.get("image_token_id", hf["image_token_index"])),
                         image_token_in_vocab=True)


override = whole.override


def _vision_converter(config: mllm.MLLMConfig):
  return siglip_vision if not config.tower.vit.use_cls else clip_vision


def _check(config: Any, architecture: str) -> None:
  if architecture not in ARCHITECTURES:
    raise ValueError(f"Architecture {architecture!r} is not handled by the LLaVA-NeXT "
                     f"converter; valid: {list(ARCHITECTURES)}.")
  if not (isinstance(config, mllm.MLLMConfig)
          and isinstance(config.tower, towers.OneVisionTowerConfig)
          and config.tower.projector == "mlp2x_gelu" and config.tower.pinpoints
          and config.connector == connectors.ProjectorConfig("identity")):
    raise ValueError(f"{architecture} holds an MLLM of the AnyRes (OneVision) tower with "
                     "pinpoints and the mlp2x_gelu projector, and the identity connector.")
  if (architecture == NEXT) != (config.tower.anyres_max == 0):
    raise ValueError(f"{architecture}: anyres_max={config.tower.anyres_max}; LLaVA-NeXT never "
                     "shrinks the map (0), LLaVA-OneVision does (anyres_max_<n>, n > 0).")


def config_to_hf(config: mllm.MLLMConfig, architecture: str) -> dict[str, Any]:
  _check(config, architecture)
  vision_conv = _vision_converter(config)
  vision = vision_conv.config_to_hf(config.tower.vit, "SiglipVisionModel" if vision_conv is
                                    siglip_vision else "CLIPVisionModel")
  text = llama.text_config_to_hf(config.llm)
  del vision["architectures"]
  vision["image_size"] = config.tower.crop_size
  out = {"architectures": [architecture], "model_type": HF_DEFAULTS[architecture]["model_type"],
         "vision_config": vision, "text_config": text,
         "image_token_index": config.image_token_id, "projector_hidden_act": "gelu",
         "multimodal_projector_bias": True, "vision_feature_layer": config.tower.select_layer,
         "vision_feature_select_strategy": STRATEGIES[vision["model_type"]],
         "image_grid_pinpoints": [list(p) for p in config.tower.pinpoints],
         "tie_word_embeddings": config.llm.tie_embeddings, "dtype": config.llm.param_dtype}
  if architecture == ONEVISION:
    out["vision_aspect_ratio"] = f"anyres_max_{config.tower.anyres_max}"
  return out


def with_kept(hf_config: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
  """SigLIP's `vision_use_head`: whether the checkpoint had the pooling head (kept aside)."""
  vision = hf_config["vision_config"]
  if vision["model_type"] == "siglip_vision_model":
    vision["vision_use_head"] = any(k.startswith(VISION + "head.") for k in kept)
  return hf_config


def select_tensors(hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  """Every tensor under the name transformers 5 writes to disk."""
  del hf_config
  return whole.renamed(tensors, _OTHER_NAMES)


def rules(config: mllm.MLLMConfig) -> list[mapping.Rule]:
  vit = [r for r in _vision_converter(config).rules(config.tower.vit) if r.path[0] != "post_norm"]
  d_in, d = config.tower.vit.width, config.tower.out_width
  return (mapping.moved(vit, lambda n: VISION + n, ("tower", "vit"))
          + mapping.linear_rules(PROJECTOR + "linear_1", ("tower", "projector", "linear_0"),
                                 (d_in,), (d,), bias=True)
          + mapping.linear_rules(PROJECTOR + "linear_2", ("tower", "projector", "linear_1"),
                                 (d,), (d,), bias=True)
          + [mapping.Rule(NEWLINE, ("tower", "image_newline"))]
          + mapping.moved(llama.rules(config.llm), lambda n: "language_model." + n, ("llm",)))
