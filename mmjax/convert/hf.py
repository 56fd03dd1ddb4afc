"""Converting whole checkpoints: Hugging Face directory ↔ mmjax directory (config + params).

Each supported architecture has a converter module exposing `CONFIG_TYPE`,
`config_from_hf(hf_config) -> config`, `config_to_hf(config, architecture) -> dict` and
`rules(config) -> list[mapping.Rule]`; optionally `select_tensors(hf_config, tensors)` (normalise
names, pick a sub-model), `join_tensors(tensors)` (undo that naming on export), `HOLDS` (the
architecture a converted checkpoint exports as), `override(config, **fields)` (the `--scan_layers`
/ `--param_dtype` overrides of a config whose parts hold those fields; default
`dataclasses.replace`) and `KEPT` (prefixes of HF tensors the mmjax model does not compute with,
kept as they are for the export; `with_kept(hf_config, kept)` sets what depends on them). An mmjax checkpoint directory holds `config.json`
({"architecture", "config"}: the config as `config_json` writes it), `params.safetensors` (names
are '/'-joined tree paths) and, when the converter keeps tensors, `kept.safetensors` (HF names).
"""
import dataclasses
import importlib
import json
import pathlib
from typing import Any

import numpy as np

from mmjax import errors
from mmjax.convert import config_json
from mmjax.convert import files
from mmjax.convert import layout
from mmjax.convert import mapping

CONVERTERS = {
    "CLIPVisionModel": "mmjax.convert.clip_vision",
    "CLIPModel": "mmjax.convert.clip_vision",
    "ConvNextModel": "mmjax.convert.convnext",
    "LlamaForCausalLM": "mmjax.convert.llama",
    "Qwen2ForCausalLM": "mmjax.convert.llama",
    "Qwen2VisionTransformerPretrainedModel": "mmjax.convert.qwen2_vl_vision",
    "LlavaForConditionalGeneration": "mmjax.convert.llava",
    "Qwen2VLForConditionalGeneration": "mmjax.convert.qwen2_vl",
    "LlavaNextForConditionalGeneration": "mmjax.convert.llava_next",
    "LlavaOnevisionForConditionalGeneration": "mmjax.convert.llava_next",
    "InternVLForConditionalGeneration": "mmjax.convert.internvl",
}
KEPT_FILE = "kept.safetensors"


def converter(architecture: str):
  if architecture not in CONVERTERS:
    raise ValueError(f"Architecture {architecture!r} has no converter; supported: "
                     f"{sorted(CONVERTERS)}.")
  return importlib.import_module(CONVERTERS[architecture])


def architecture_of(hf_config: dict[str, Any]) -> str:
  archs = hf_config.get("architectures") or []
  if len(archs) != 1:
    raise ValueError(f"config.json must name exactly one architecture, got {archs!r}; "
                     f"supported: {sorted(CONVERTERS)}.")
  return archs[0]


def held_architecture(architecture: str) -> str:
  """The architecture an imported `architecture` checkpoint exports back as."""
  return getattr(converter(architecture), "HOLDS", {}).get(architecture, architecture)


def from_hf_tensors(hf_config: dict[str, Any], tensors: dict[str, np.ndarray],
                    **overrides: Any) -> tuple[Any, dict[str, Any]]:
  """HF config + state dict → (mmjax config, params). `overrides` replace config fields
  (e.g. scan_layers=True, param_dtype="bfloat16"); params follow the config's layout and dtype."""
  return import_hf(hf_config, tensors, **overrides)[:2]


def import_hf(hf_config: dict[str, Any], tensors: dict[str, np.ndarray], **overrides: Any
              ) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
  """`from_hf_tensors`, and the HF tensors the converter keeps aside (its `KEPT`): not parameters
  of the mmjax model, written back unchanged by the export."""
  conv = converter(architecture_of(hf_config))
  tensors = _selected(conv, hf_config, tensors)
  kept = _kept_names(conv, tensors)
  config = conv.config_from_hf(hf_config)
  config = (conv.override(config, **overrides) if hasattr(conv, "override")
            else dataclasses.replace(config, **overrides))
  params = mapping.import_tensors({k: v for k, v in tensors.items() if k not in kept},
                                  conv.rules(config))
  params = _cast(params, overrides.get("param_dtype", "float32"))
  if overrides.get("scan_layers"):
    params = layout.scan_layout(params)
  return config, params, {k: tensors[k] for k in kept}


def _selected(conv: Any, hf_config: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  return conv.select_tensors(hf_config, tensors) if hasattr(conv, "select_tensors") else tensors


def _kept_names(conv: Any, tensors: dict[str, Any]) -> set[str]:
  prefixes = getattr(conv, "KEPT", ())
  return {k for k in tensors if prefixes and k.startswith(prefixes)}


def to_hf_tensors(config: Any, params: dict[str, Any], architecture: str,
                  kept: dict[str, np.ndarray] | None = None
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """mmjax config + params (either layout), and the tensors the import kept aside → (HF
  config.json dict, HF state dict)."""
  conv = converter(architecture)
  tensors = mapping.export_params(layout.unrolled_layout(_numpy(params)), conv.rules(config))
  if hasattr(conv, "join_tensors"):
    tensors = conv.join_tensors(tensors)
  clash = sorted(set(tensors) & set(kept or {}))
  if clash:
    raise ValueError(f"Kept tensors {clash[:5]} are also parameters of the model.")
  hf_config = conv.config_to_hf(config, architecture)
  if hasattr(conv, "with_kept"):  # Settings that depend on which tensors were kept aside.
    hf_config = conv.with_kept(hf_config, kept or {})
  return hf_config, {**tensors, **(kept or {})}


def load_hf(directory: str | pathlib.Path, **overrides: Any) -> tuple[Any, dict[str, Any]]:
  """Reads a Hugging Face checkpoint directory into (mmjax config, params)."""
  hf_config, tensors = files.read_hf(directory)
  return from_hf_tensors(hf_config, tensors, **overrides)


def save_hf(directory: str | pathlib.Path, config: Any, params: dict[str, Any],
            architecture: str) -> None:
  files.write_hf(directory, *to_hf_tensors(config, params, architecture))


def save(directory: str | pathlib.Path, config: Any, params: dict[str, Any],
         architecture: str, kept: dict[str, np.ndarray] | None = None) -> None:
  """Writes an mmjax checkpoint directory (with `kept`, the HF tensors the import kept aside)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  meta = {"architecture": architecture, "config": config_json.dump(config)}
  (directory / files.CONFIG_FILE).write_text(json.dumps(meta, indent=2))
  files.save_params(directory / files.PARAMS_FILE, _numpy(params))
  (directory / KEPT_FILE).unlink(missing_ok=True)  # --overwrite: none of another model's.
  if kept:
    files.save_tensors(directory / KEPT_FILE, kept)


def load(directory: str | pathlib.Path, flag: str = "--mmjax") -> tuple[Any, dict[str, Any], str]:
  """Reads an mmjax checkpoint directory → (config, params, architecture); errors name it as the
  command's `flag` gave it."""
  directory = files.checkpoint_dir(directory, flag)
  meta = files.read_config(directory, flag)
  if not isinstance(meta.get("architecture"), str) or not isinstance(meta.get("config"), dict):
    raise errors.InputError(errors.message(
        f"{directory / files.CONFIG_FILE}", "not an mmjax checkpoint's config (no "
        "'architecture' and 'config')", "give a folder written by python -m mmjax.convert"))
  conv = converter(meta["architecture"])
  if config_json.TYPE_KEY in meta["config"]:
    config = config_json.load(meta["config"])
  else:  # Written before configs carried their types: one flat dataclass of the converter.
    config = conv.CONFIG_TYPE(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in meta["config"].items()})
  if not isinstance(config, conv.CONFIG_TYPE):
    raise ValueError(f"config is a {type(config).__name__}; {meta['architecture']} needs a "
                     f"{conv.CONFIG_TYPE.__name__}.")
  return config, files.load_params(directory / files.PARAMS_FILE), meta["architecture"]


def load_kept(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The HF tensors an mmjax checkpoint directory keeps aside ({} when it keeps none)."""
  path = pathlib.Path(directory) / KEPT_FILE
  return files.load_tensors(path) if path.exists() else {}


def _numpy(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def _cast(tree: Any, dtype: str) -> Any:
  if isinstance(tree, dict):
    return {k: _cast(v, dtype) for k, v in tree.items()}
  return tree.astype(dtype)
