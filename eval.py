"""Evaluates the newest (or a given) checkpoint of a training run.

  python eval.py --config configs/default.py:size=tiny,steps=50 --workdir /tmp/run [--step N]

The config must be the run's (its WORKDIR/config.json is compared: model, text and image
formatting, eval settings; --allow_eval_changes admits other eval settings). Writes
WORKDIR/eval/<step>.json (accuracy by question family and kind, loss, perplexity, generation
speed, and the config) and prints a table; an earlier result of another config is never
replaced. The mesh may differ from training's (--config.mesh.*).
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
from mmjax import evaluation  # noqa: E402


def _define(fv: flags.FlagValues, argv: list[str]) -> None:
  config_flags.DEFINE_config_file("config", None, "Config file (path[:args]).", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "The training run's directory.", flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_bool("allow_eval_changes", False, "Evaluate with eval settings (eval, evals, "
                    "data.dataset, eval_split, eval_examples, kinds) other than the run's.",
                    flag_values=fv)


def _main(argv: list[str]) -> int:
  fv = cli.parse_flags(argv, _define, ("config", "workdir"), __doc__)
  console.quiet(fv.verbosity is not None)
  checked = evaluation.check(fv.config, fv.workdir, fv.step,
                             fv.allow_eval_changes)  # Writes nothing.
  with errors.expected(f"--workdir {fv.workdir}"):
    console.log_to(fv.workdir, jax.process_index())
  evaluation.evaluate(fv.config, fv.workdir, fv.step, fv.allow_eval_changes, checked)
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
