"""How every command runs: expected failures (`mmjax.errors.Error`) end as one line on stderr
(`error: …`) with exit code 2, never a traceback; anything else is a bug and keeps its trace.

A traceback of an expected failure is shown with `--verbosity=debug` (train.py, eval.py) or when
the environment sets MMJAX_TRACEBACK=1 (every command).
"""
import os
import re
import sys
import traceback
from typing import Callable, Sequence

from absl import flags
from absl import logging as absl_logging

from mmjax import config_args
from mmjax import errors

TRACEBACK_ENV = "MMJAX_TRACEBACK"
EXIT_ERROR = 2
VERBOSITIES = ("debug", "info", "warning", "error", "fatal")  # Or absl's numbers: 0 INFO, 1 DEBUG.


def _level(text: str) -> int | str | None:
  """A --verbosity value as absl reads it (a name or a number), None if it is neither."""
  text = text.strip().lower()
  if text in VERBOSITIES:
    return text
  try:
    return int(text)
  except ValueError:
    return None


def wants_traceback(argv: Sequence[str]) -> bool:
  """MMJAX_TRACEBACK set, or --verbosity at DEBUG (`debug`, or absl's 1 and above)."""
  if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
    return True
  for i, a in enumerate(argv):
    value = a.split("=", 1)[1] if a.startswith("--verbosity=") else (
        argv[i + 1] if a == "--verbosity" and i + 1 < len(argv) else None)
    level = _level(value) if value is not None else None
    if level == "debug" or (isinstance(level, int) and level >= 1):
      return True
  return False


def run(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
  """`main(argv)`'s exit code; an `errors.Error` is printed as `error: …` and gives 2, a usage
  error (argparse's SystemExit) its own code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    return main(argv) or 0
  except errors.Error as e:
    if wants_traceback(argv):
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR
  except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    return 130  # 128 + SIGINT, as a shell reports it.
  except SystemExit as e:  # argparse's usage errors, --help, a preempted run's 143.
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


def parse_flags(argv: Sequence[str],
                define: Callable[[flags.FlagValues, list[str]], None],
                required: Sequence[str], usage: str) -> flags.FlagValues:
  """absl flags of one command, parsed from `argv` (without the program name) into a fresh
  FlagValues: `define(flag_values, full_argv)` declares them (a config flag reads its overrides
  from `full_argv`), `--verbosity` is added. Unknown flags, bad values, a config file that does
  not load and a misspelt `--config.FIELD` are `ConfigError`s; `--help` prints the flags and
  exits 0."""
  fv = flags.FlagValues()
  full = [sys.argv[0] if sys.argv else "mmjax", *argv]
  define(fv, full)
  flags.DEFINE_string("verbosity", None, "Library logs on stderr too, at this level (debug, "
                      "info, warning, error, or absl's numbers: 0 info, 1 debug); debug also "
                      "shows the traceback of an error.", flag_values=fv)
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
    print(usage.strip() + "\n\nflags:\n" + fv.get_help(include_special_flags=False))
    raise SystemExit(0)
  # The config file loaded once on its own first: one that is missing or fails is named with its
  # reason (config_flags wraps a traceback's text into its message, or defers a missing file's
  # error to the config's first use).
  _load_config(argv)
  try:
    rest = fv(full)
  except flags.UnrecognizedFlagError as e:
    valid = ", ".join(f"--{n}" for n in sorted(fv) if "." not in n)
    raise errors.ConfigError(errors.message(f"--{e.flagname}", "unknown flag",
                                            f"valid: {valid}")) from None
  except flags.Error as e:
    text = errors.first_line(e)
    match = re.match(r"flag (--\S+?): (.*)", text)
    raise errors.ConfigError(errors.message(*match.groups()) if match else text) from None
  except (AttributeError, KeyError, ValueError, TypeError) as e:  # From a config override.
    raise _override_error(argv, e) from None
  if len(rest) > 1:
    raise errors.ConfigError(errors.message(f"{rest[1]!r}", "unexpected argument",
                                            "every input is a --flag"))
  for name in required:
    if fv[name].value is None:
      raise errors.ConfigError(errors.message(f"--{name}", "required flag not given",
                                              f"pass --{name} ({fv[name].help.rstrip('.')})"))
  flags.FLAGS.mark_as_parsed()  # absl logging's handler asks; this command's flags are above.
  level = "info" if fv.verbosity is None else _level(fv.verbosity)
  if level is None:
    raise errors.ConfigError(errors.message(
        f"--verbosity={fv.verbosity}", "not a level",
        f"valid: {', '.join(VERBOSITIES)} or a number (0: info, 1: debug)"))
  # INFO by default, as absl's own flag parsing sets it: the run's log file keeps the libraries'
  # INFO lines, and `console.quiet` keeps them off stderr unless --verbosity was given.
  absl_logging.set_verbosity(level)
  return fv


def _config_value(argv: Sequence[str]) -> str | None:
  """The value of --config in `argv`, if given."""
  value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if value is None:
    i = next((i for i, a in enumerate(argv) if a == "--config"), None)
    value = argv[i + 1] if i is not None and i + 1 < len(argv) else None
  return value


def _load_config(argv: Sequence[str]) -> None:
  """Loads the --config file of `argv` (if given): one that is missing or fails (an unknown
  size, a bad argument) is a `ConfigError` naming it with its reason."""
  value = _config_value(argv)
  if value is None:
    return
  path, _, arg = value.partition(":")
  try:
    config_args.get_config(path, arg or None)
  except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
    raise errors.ConfigError(errors.message(f"--config {value}", errors.first_line(e),
                                            "fix the config path or its arguments")) from None


def _override_error(argv: Sequence[str], error: Exception) -> errors.ConfigError:
  """Which `--config.PATH=VALUE` failed and why: a field that does not exist (listing the valid
  ones at that level), else the library's reason."""
  config_arg = _config_value(argv)
  if config_arg is not None:
    path, _, arg = config_arg.partition(":")
    try:
      c = config_args.get_config(path, arg or None)
    except Exception:  # The file itself failed: its reason below.
      c = None
    for a in argv:
      match = re.match(r"--?(?:no)?config\.([^=]+)", a)
      if c is None or not match:
        continue
      node, walked = c, []
      for key in match.group(1).split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if key not in keys:
          where = ".".join(walked) or "the config"
          return errors.ConfigError(errors.message(
              f"--config.{match.group(1)}", f"{where} has no field {key!r}",
              f"valid: {', '.join(sorted(keys)) or '(none: not a section)'}"))
        node, walked = node[key], walked + [key]
  return errors.ConfigError(errors.message("--config", errors.first_line(error)))
