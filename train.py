"""Trains an mmjax model from an ml-collections config; re-running the same command resumes.

  python train.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run \\
      [--config.train.lr=3e-4 ...]

Multi-host: under a TPU pod or SLURM launcher `jax.distributed.initialize()` finds its peers
itself (--distributed); elsewhere pass --coordinator_address, --num_processes and --process_id.
"""
import sys

from mmjax import xla_flags

xla_flags.apply()  # Before jax is imported.

import jax  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax import console  # noqa: E402
from mmjax.training import distributed  # noqa: E402
from mmjax.training import loop  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and evaluations go here.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet()
  distributed.initialize()
  console.log_to(_WORKDIR.value, jax.process_index())
  try:
    loop.train(_CONFIG.value, _WORKDIR.value)
  except (loop.NonFiniteLossError, loop.NoCheckpointRestores) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
