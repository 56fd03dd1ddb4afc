"""Evaluates the newest (or a given) checkpoint of a training run.

  python eval.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run [--step N]

Writes WORKDIR/eval/<step>.json (accuracy by question family and kind, loss, perplexity,
generation speed) and prints a table. The mesh may differ from training's (--config.mesh.*).
"""
import sys

from mmjax import xla_flags

xla_flags.apply()  # Before jax is imported.

import jax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax import console  # noqa: E402
from mmjax import evaluation  # noqa: E402
from mmjax.training import checkpoint  # noqa: E402
from mmjax.training import loop  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet()
  console.log_to(_WORKDIR.value, jax.process_index())
  try:
    evaluation.evaluate(_CONFIG.value, _WORKDIR.value, _STEP.value)
  except (loop.NoCheckpointRestores, checkpoint.UnreadableCheckpoint) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
