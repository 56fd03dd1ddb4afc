"""Trains an mmjax model from an ml-collections config; re-running the same command resumes.

  python train.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run \\
      [--config.train.lr=3e-4 ...]

Multi-host: under a TPU pod or SLURM launcher `jax.distributed.initialize()` finds its peers
itself (--distributed); elsewhere pass --coordinator_address, --num_processes and --process_id.
A bad flag, config or folder is one `error:` line (exit 2) before anything is written.
"""
import sys

from mmjax import xla_flags

xla_flags.apply()  # Before jax is imported.

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mmjax import cli  # noqa: E402
from mmjax import console  # noqa: E402
from mmjax import errors  # noqa: E402
from mmjax.training import distributed  # noqa: E402
from mmjax.training import loop  # noqa: E402


def _define(fv: flags.FlagValues, argv: list[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Checkpoints, metrics and evaluations go here.",
                      flag_values=fv)
  distributed.define_flags(fv)


def _main(argv: list[str]) -> int:
  fv = cli.parse_flags(argv, _define, ("config", "workdir"), __doc__)
  console.quiet(fv.verbosity is not None)
  distributed.initialize(fv)
  prepared = loop.prepare(fv.config, fv.workdir)  # Everything checked; nothing written yet.
  with errors.expected(f"--workdir {fv.workdir}"):  # E.g. a path no one can create.
    console.log_to(fv.workdir, jax.process_index())
  loop.train(fv.config, fv.workdir, prepared)
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
