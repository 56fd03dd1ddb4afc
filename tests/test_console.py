"""What a run shows on stderr: `say`'s lines once, with or without --verbosity (which adds the
libraries' INFO logs to stderr); the run's log file keeps both."""
import logging

import pytest
from absl import logging as absl_logging

from mmjax import console


def _record(name: str, level: int = logging.INFO) -> logging.LogRecord:
  return logging.LogRecord(name, level, __file__, 1, "a line", None, None)


@pytest.mark.parametrize("verbose", [False, True])
def test_a_said_line_reaches_stderr_once_and_the_log_file(tmp_path, capfd, verbose, monkeypatch):
  handler = absl_logging.get_absl_handler()  # What writes the logs to stderr.
  monkeypatch.setattr(handler, "filters", list(handler.filters))
  monkeypatch.setattr(handler, "level", handler.level)
  console.quiet(verbose)
  shown = lambda r: r.levelno >= handler.level and bool(handler.filter(r))
  assert not shown(_record(console._SAID))  # `say` writes its own line.
  assert shown(_record("orbax")) == verbose
  assert shown(_record("orbax", logging.WARNING))
  root = logging.getLogger()
  level, handlers = root.level, list(root.handlers)
  root.setLevel(logging.INFO)
  try:
    path = console.log_to(tmp_path)
    console.say("Stage %s: steps %d-%d", "finetune", 0, 4)
    logging.getLogger("orbax").info("a library's line")
  finally:
    for h in root.handlers[len(handlers):]:
      h.close()
    root.handlers[:], root.level = handlers, level
  assert capfd.readouterr().err.count("Stage finetune: steps 0-4") == 1
  assert {"Stage finetune: steps 0-4", "a library's line"} <= set(
      line.split("] ", 1)[-1] for line in path.read_text().splitlines())
