"""What every registry by name checks when a part registers (towers, connectors, evaluators)."""


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
