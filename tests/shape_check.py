"""The test-time checker of mmjax's shape annotations (`jaxtyping.install_import_hook`, in
tests/conftest.py).

jaxtyping's hook wraps every function of mmjax with `jaxtyped(typechecker=check)`: within one
call, each axis letter binds to one size (mmjax.shapes). `check` checks only the array
annotations (`Float[Array, "B L D"]`, also inside `X | None`, `tuple[…]`, `list[…]` and
`dict[str, …]`); plain Python hints are documentation here, and a function's own checks of its
arguments stay the errors users see.
"""
import functools
import inspect
import types
import typing

import jaxtyping


def _array_hint(hint) -> bool:
  return isinstance(hint, type) and issubclass(hint, jaxtyping.AbstractArray)


def _holds_arrays(hint) -> bool:
  return _array_hint(hint) or any(_holds_arrays(a) for a in typing.get_args(hint)
                                  if a is not Ellipsis)


def _matches(value, hint) -> bool:
  """Whether `value` meets the array annotations inside `hint` (anything else passes)."""
  if _array_hint(hint):
    return isinstance(value, hint)
  if not _holds_arrays(hint):
    return True
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, a) for a in args)
  if origin is tuple and isinstance(value, tuple):
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_matches(v, args[0]) for v in value)
    return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
  if origin is list and isinstance(value, list):
    return all(_matches(v, args[0]) for v in value)
  if origin is dict and isinstance(value, dict):
    return all(_matches(v, args[1]) for v in value.values())
  return True


def check(fn):
  """A decorator raising TypeError when an argument or the result of `fn` does not meet its
  array annotations (jaxtyping calls it on stand-ins of the function it checks)."""
  signature = inspect.signature(fn)
  hints = typing.get_type_hints(fn)

  @functools.wraps(fn)
  def checked(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    for name, value in bound.arguments.items():
      if name in hints and not _matches(value, hints[name]):
        raise TypeError(f"{fn.__qualname__}: argument {name!r} does not meet {hints[name]}.")
    out = fn(*args, **kwargs)
    if "return" in hints and not _matches(out, hints["return"]):
      raise TypeError(f"{fn.__qualname__}: the result does not meet {hints['return']}.")
    return out

  return checked
