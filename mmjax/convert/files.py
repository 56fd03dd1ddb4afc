"""Reading and writing checkpoint directories: safetensors only (never pickle), no torch."""
import json
import pathlib
from typing import Any

import numpy as np
from safetensors import numpy as st_numpy
from safetensors import SafetensorError
from safetensors import safe_open

from mmjax import errors
from mmjax import files as mmjax_files

from mmjax.convert import mapping

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 64 << 20  # A model's config.json is kilobytes.


def checkpoint_dir(directory: str | pathlib.Path, flag: str) -> pathlib.Path:
  """`directory` if it is a folder holding a config.json; an `InputError` naming `flag`."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise errors.InputError(errors.message(
        f"{flag} {directory}", "no such folder" if not directory.exists() else "not a folder",
        "give a checkpoint folder"))
  return directory


def read_config(directory: pathlib.Path, flag: str) -> dict[str, Any]:
  """The checkpoint folder's config.json, a JSON object."""
  value = mmjax_files.read_json(directory / CONFIG_FILE, f"{flag}'s config",
                                MAX_CONFIG_BYTES)
  if not isinstance(value, dict):
    raise errors.InputError(errors.message(f"{directory / CONFIG_FILE}", "not a JSON object"))
  return value


def read_hf(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """A Hugging Face checkpoint directory → (config.json as a dict, {name: array})."""
  directory = checkpoint_dir(directory, "--hf")
  config = read_config(directory, "--hf")
  paths = sorted(directory.glob("*.safetensors"))
  if not paths:
    raise errors.InputError(errors.message(
        f"--hf {directory}", "holds no *.safetensors file", "pickled .bin checkpoints are not "
        "read: re-save the model with safe_serialization=True"))
  tensors: dict[str, np.ndarray] = {}
  for path in paths:
    mmjax_files.regular_file(path, "checkpoint file")
    try:
      with safe_open(path, framework="numpy") as f:
        for name in f.keys():
          if name in tensors:
            raise errors.InputError(errors.message(
                f"tensor {name!r}", f"appears in more than one file of {directory}"))
          tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError) as e:
      raise errors.InputError(errors.message(f"checkpoint file {path}",
                                             f"not readable safetensors ({e})")) from None
  return config, tensors


def write_hf(directory: str | pathlib.Path, config: dict[str, Any],
             tensors: dict[str, np.ndarray]) -> None:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
  st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                     str(directory / "model.safetensors"), metadata={"format": "pt"})


def save_params(path: str | pathlib.Path, params: dict[str, Any]) -> None:
  """Nested params → one safetensors file whose names are '/'-joined tree paths."""
  save_tensors(path, {"/".join(k): v for k, v in mapping.flatten(params).items()})


def check_params(path: str | pathlib.Path, what: str = "parameter file") -> pathlib.Path:
  """`path` if it is a regular file with a readable safetensors header (its tensors are not
  read); an `InputError` naming `what` if not."""
  path = mmjax_files.regular_file(path, what)
  try:
    with safe_open(path, framework="numpy") as f:
      f.keys()
  except (SafetensorError, OSError) as e:
    raise errors.InputError(errors.message(f"{what} {path}",
                                           f"not readable safetensors ({e})")) from None
  return path


def save_tensors(path: str | pathlib.Path, tensors: dict[str, Any]) -> None:
  """{name: array} → one safetensors file."""
  st_numpy.save_file({k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()},
                     str(path))


def load_tensors(path: str | pathlib.Path, what: str = "parameter file") -> dict[str, np.ndarray]:
  """A safetensors file → {name: array}; an `InputError` naming `what` if it is not one."""
  path = mmjax_files.regular_file(path, what)
  try:
    return st_numpy.load_file(str(path))
  except (SafetensorError, OSError) as e:
    raise errors.InputError(errors.message(f"{what} {path}",
                                           f"not readable safetensors ({e})")) from None


def load_params(path: str | pathlib.Path) -> dict[str, Any]:
  """A file of `save_params` → nested params; an `InputError` if it is not one."""
  flat = load_tensors(path)
  params: dict[str, Any] = {}
  for name, value in flat.items():
    node = params
    *parents, leaf = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return params
