"""Reading and writing checkpoint directories: safetensors only (never pickle), no torch."""
import json
import pathlib
from typing import Any

import numpy as np
from safetensors import numpy as st_numpy
from safetensors import safe_open

from mmjax.convert import mapping

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"


def read_hf(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """A Hugging Face checkpoint directory → (config.json as a dict, {name: array})."""
  directory = pathlib.Path(directory)
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"No {CONFIG_FILE} in {directory}.")
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"No *.safetensors files in {directory} (pickled .bin checkpoints "
                            "are not read; re-save the model with safe_serialization=True).")
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():
        if name in tensors:
          raise ValueError(f"Tensor {name!r} appears in more than one file of {directory}.")
        tensors[name] = f.get_tensor(name)
  return json.loads(config_path.read_text()), tensors


def write_hf(directory: str | pathlib.Path, config: dict[str, Any],
             tensors: dict[str, np.ndarray]) -> None:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
  st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                     str(directory / "model.safetensors"), metadata={"format": "pt"})


def save_params(path: str | pathlib.Path, params: dict[str, Any]) -> None:
  """Nested params → one safetensors file whose names are '/'-joined tree paths."""
  flat = {"/".join(k): np.ascontiguousarray(np.asarray(v))
          for k, v in mapping.flatten(params).items()}
  st_numpy.save_file(flat, str(path))


def load_params(path: str | pathlib.Path) -> dict[str, Any]:
  params: dict[str, Any] = {}
  for name, value in st_numpy.load_file(str(path)).items():
    node = params
    *parents, leaf = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return params
