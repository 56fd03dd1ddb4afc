"""A model config (nested frozen dataclasses) ↔ JSON, for the `config.json` of a checkpoint.

A whole model's config holds its parts' configs (`MLLMConfig.tower` is a `ViTTowerConfig`, …),
whose types JSON cannot carry: every dataclass is written as an object whose `__type__` names its
class ("mmjax.models.towers.vit:ViTTowerConfig"), so `load` rebuilds the same config. Only classes
of mmjax's own modules are rebuilt (a config file cannot make `load` import anything else), and
lists come back as tuples, as the frozen configs declare their sequences.
"""
import dataclasses
import importlib
from typing import Any

TYPE_KEY = "__type__"
_PACKAGE = "mmjax."


def dump(config: Any) -> Any:
  """`config` as JSON-ready values (dicts, lists, numbers, strings, None)."""
  if dataclasses.is_dataclass(config) and not isinstance(config, type):
    cls = type(config)
    fields = {f.name: dump(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {TYPE_KEY: f"{cls.__module__}:{cls.__qualname__}", **fields}
  if isinstance(config, (list, tuple)):
    return [dump(x) for x in config]
  if isinstance(config, dict):
    return {str(k): dump(v) for k, v in config.items()}
  return config


def load(value: Any) -> Any:
  """The config `dump` wrote; a ValueError names a `__type__` that is not an mmjax dataclass."""
  if isinstance(value, list):
    return tuple(load(x) for x in value)
  if not isinstance(value, dict):
    return value
  fields = {k: load(v) for k, v in value.items() if k != TYPE_KEY}
  if TYPE_KEY not in value:
    return fields
  return _class(value[TYPE_KEY])(**fields)


def _class(name: Any) -> type:
  module, _, qualname = str(name).partition(":")
  if not module.startswith(_PACKAGE) or not qualname:
    raise ValueError(f"{TYPE_KEY} {name!r} is not an mmjax config class ('mmjax.…:Name').")
  try:
    cls = importlib.import_module(module)
    for part in qualname.split("."):
      cls = getattr(cls, part)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"{TYPE_KEY} {name!r} names no class of this mmjax ({e}).") from None
  if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
    raise ValueError(f"{TYPE_KEY} {name!r} is not a config dataclass.")
  return cls
