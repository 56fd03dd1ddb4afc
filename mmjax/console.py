"""What a run shows: a few lines of its own on stderr, everything else in WORKDIR/log.txt.

train.py and eval.py print the progress bar, one line per stage (`say`) and the results table;
the libraries' INFO logs (orbax's per-save lines, TFDS's, absl's) go to the run's log file, and
to stderr as well only when `--verbosity` is given on the command line. Warnings and errors
reach stderr, except TFDS's, which are about its own optional speed-ups and dataset folders
while it generates the embedded dataset (the log keeps them).
"""
import logging
import pathlib
import sys

import tqdm
from absl import logging as absl_logging

LOG_FILE = "log.txt"


_SAID = "mmjax.console"  # The logger of `say`'s lines: stderr has them already.


class _StderrFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "tensorflow_datasets" not in record.pathname


class _NotSaid(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return record.name != _SAID


def quiet(verbose: bool = False) -> None:
  """Unless `verbose` (--verbosity was given): only warnings and errors on stderr (call first,
  before any library logs). Either way `say`'s lines reach stderr once."""
  absl_logging.use_absl_handler()  # Python logging's records through absl's handler.
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _NotSaid) for f in handler.filters):
    handler.addFilter(_NotSaid())
  if verbose:  # Everything absl's verbosity lets through, whatever an earlier call set.
    handler.setLevel(logging.NOTSET)
    handler.filters = [f for f in handler.filters if not isinstance(f, _StderrFilter)]
    return
  handler.setLevel(logging.WARNING)
  if not any(isinstance(f, _StderrFilter) for f in handler.filters):
    handler.addFilter(_StderrFilter())


def log_to(workdir: str | pathlib.Path, process_index: int = 0) -> pathlib.Path:
  """Sends INFO and above to `workdir`/log.txt (process i > 0 of a multi-host run: log.i.txt);
  returns the path."""
  name = LOG_FILE if process_index == 0 else f"log.{process_index}.txt"
  path = (pathlib.Path(workdir) / name).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  root = logging.getLogger()
  if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(absl_logging.PythonFormatter())
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
  return path


def say(message: str, *args) -> None:
  """One line for the user on stderr (above a progress bar, if one is drawn), also logged."""
  text = message % args if args else message
  tqdm.tqdm.write(text, file=sys.stderr)
  logging.getLogger(_SAID).info(text)
