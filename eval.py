"""Evaluates the newest (or a given) checkpoint of a training run.

  python eval.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run [--step N]

Writes WORKDIR/eval/<step>.json (accuracy by question family and kind, loss, perplexity,
generation speed) and prints a table. The mesh may differ from training's (--config.mesh.*).
"""
from mmjax import xla_flags

xla_flags.apply()  # Before jax is imported.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax import evaluation  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  evaluation.evaluate(_CONFIG.value, _WORKDIR.value, _STEP.value)


if __name__ == "__main__":
  app.run(main)
