"""The error contract of every entry point: an expected failure is one line for the user.

Expected failures — a bad flag, config, file, checkpoint, dataset or mesh — are raised as an
`Error` whose message reads `<what> — <why>; <what to do>` (naming the file, field or value);
the commands (`mmjax.cli.run`) print it as `error: …` on stderr and exit 2, with no traceback
unless one is asked for. Anything else is a bug and keeps its traceback.

Library code that predates the contract raises ValueError/OSError with such messages while it
reads a config or a file; `expected` turns those into `Error`s at the places where the input is
checked (before any work), so a failure there is the user's input, never a bug being hidden.
"""
import contextlib
from typing import Iterator

# What `expected` converts: errors the library raises about its input.
_INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                 PermissionError, FileExistsError)


class Error(Exception):
  """An expected failure; `str()` is the one line the user reads."""


class ConfigError(Error, ValueError):
  """A config field, flag or argument is invalid, or conflicts with another."""


class InputError(Error, ValueError):
  """A file or folder given as input is missing, of the wrong kind, too large or malformed."""


class OutputError(Error, FileExistsError):
  """An output would overwrite something it must not (a source, an earlier result)."""


class RunMismatch(Error, ValueError):
  """A command's config differs from the config its run directory was trained with."""


def message(what: str, why: str, todo: str = "") -> str:
  """`<what> — <why>; <what to do>`: the form of every error line."""
  return f"{what} — {why.rstrip('.')}" + (f"; {todo.rstrip('.')}" if todo else "")


def first_line(error: BaseException) -> str:
  """An exception's message on one line (a KeyError's: "missing 'key'")."""
  if isinstance(error, KeyError) and error.args:
    return f"missing {error.args[0]!r}"
  text = str(error)
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return " ".join(lines) or type(error).__name__


@contextlib.contextmanager
def expected(what: str = "") -> Iterator[None]:
  """Inside: the library's ValueError/KeyError/file errors are the input's fault and become an
  `Error` (`InputError` for files, `ConfigError` otherwise), prefixed with `what` if given."""
  try:
    yield
  except Error:
    raise
  except _INPUT_ERRORS as e:
    kind = InputError if isinstance(e, OSError) else ConfigError
    text = first_line(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
      text = f"{e.filename}: {text}"
    raise kind(f"{what} — {text}" if what else text) from e
