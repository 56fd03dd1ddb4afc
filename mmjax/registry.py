"""Registries by name of model parts (towers, connectors, decoders) and what every registry
checks when a part registers (evaluators too)."""
import dataclasses
from collections.abc import Callable
from typing import Any


def admit(registry: dict, kind: str, name: str, cls: type, interface: str,
          required: tuple[str, ...]) -> None:
  """Refuses a second `name` in `registry` (ValueError) and a `cls` lacking an attribute of its
  `interface` (TypeError), naming the `kind` of part."""
  if name in registry:
    article = "An" if kind[0] in "aeiou" else "A"
    raise ValueError(f"{article} {kind} named {name!r} is registered already.")
  missing = [a for a in required if not hasattr(cls, a)]
  if missing:
    raise TypeError(f"{kind.capitalize()} {name!r}: {cls.__name__} lacks {missing} of the "
                    f"{interface} interface.")


@dataclasses.dataclass(frozen=True)
class Entry:
  config: type  # The part's config dataclass.
  module: Callable[..., Any]  # Its Linen module (or a factory of it), taking the config first.
  # Its block of the ml-collections config (with the kind's other arguments) → a config.
  from_config: Callable[..., Any]


class Parts(dict):
  """The parts of one kind by name ({name: Entry}); each part's file registers itself."""

  def __init__(self, kind: str, interface: str, required: tuple[str, ...]):
    super().__init__()
    self.kind, self.interface, self.required = kind, interface, required

  def register(self, name: str, config: type, module: Callable[..., Any],
               from_config: Callable[..., Any]) -> None:
    admit(self, self.kind, name, config, self.interface, self.required)
    self[name] = Entry(config, module, from_config)

  def entry(self, name: str) -> Entry:
    if name not in self:
      raise ValueError(f"Unknown {self.kind} {name!r}; valid: {sorted(self)}.")
    return self[name]

  def of(self, config: Any) -> tuple[str, Entry]:
    """The name and entry of the part whose config type `config` has."""
    for name, item in self.items():
      if type(config) is item.config:
        return name, item
    raise ValueError(f"No {self.kind} takes a {type(config).__name__}; {self.kind}s: "
                     f"{sorted(self)}.")
