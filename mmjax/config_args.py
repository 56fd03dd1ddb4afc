"""big_vision-style config arguments: `configs/x.py:size=tiny,steps=100` → typed values.

A config's `get_config(arg)` declares its arguments with defaults; `parse` checks the given
ones against them (an unknown name fails, listing the valid ones) and converts each value to the
default's type.
"""
import importlib.util
import os
import pathlib
from typing import Any

import ml_collections


def _convert(name: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"Config argument {name}={text!r} is not a boolean (true/false).")
    return text.lower() in ("true", "1")
  try:
    return type(default)(text) if default is not None else text
  except ValueError:
    raise ValueError(f"Config argument {name}={text!r} is not a {type(default).__name__}.") \
        from None


def parse(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "k1=v1,k2=v2" against `defaults` (which fixes the names and types)."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep:
      raise ValueError(f"Config argument {item!r} is not of the form name=value.")
    if name not in defaults:
      raise ValueError(f"Unknown config argument {name!r}; valid: {sorted(defaults)}.")
    values[name] = _convert(name, text.strip(), defaults[name])
  return ml_collections.ConfigDict(values)


def choose(name: str, value: str, options: dict[str, Any]) -> Any:
  if value not in options:
    raise ValueError(f"Unknown {name} {value!r}; valid: {sorted(options)}.")
  return options[value]


def load_module(path: str | os.PathLike):
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"mmjax_config_{path.stem}", path)
  if spec is None or not path.is_file():
    raise FileNotFoundError(f"No config file {path}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(path: str | os.PathLike, arg: str | None = None) -> ml_collections.ConfigDict:
  """A config file's `get_config(arg)`, as `--config path:arg` loads it (for scripts and tests)."""
  return load_module(path).get_config(arg)
