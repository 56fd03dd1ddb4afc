"""Evaluation behind `eval.py`: the config's evaluators (`c.evals`, `mmjax.evaluators`: VQA
accuracy by question family and kind, answer-token loss and perplexity) on one checkpoint.

Runs on whatever mesh the config names (it may differ from training's): parameters are restored
straight onto it. Writes `WORKDIR/eval/<step>.json` (the evaluators' results, merged) and prints
a table.
"""
import json
import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
from absl import logging
import ml_collections

from mmjax import errors
from mmjax import evaluators
from mmjax import files
from mmjax import sharding
from mmjax.models import mllm
from mmjax.training import build
from mmjax.training import checkpoint as checkpoint_lib
from mmjax.training import loop
from mmjax.training import step as step_lib
from mmjax.training import validate


def _restore(c, workdir, model, spec, mesh, step):
  """The parameters of checkpoint `step`, or of the newest one that restores when `step` is None
  (a damaged newer one is moved aside with a one-line warning, as training's resume does)."""
  checkpoints = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints")
  boxed = jax.eval_shape(model.init, jax.random.key(0), spec)["params"]
  target, shardings = nn.unbox(boxed), sharding.shardings(boxed, mesh)
  steps = [step] if step is not None else sorted(checkpoints.all_steps(), reverse=True)
  skipped = []
  try:
    for candidate in steps:
      try:
        return candidate, checkpoints.restore_params(candidate, target, shardings)
      except checkpoint_lib.UnreadableCheckpoint as e:
        if step is not None:
          raise
        skipped.append(candidate)  # Left where it is: evaluation never moves checkpoints.
        logging.warning("%s Evaluating the newest checkpoint before it.", e)
    raise loop.NoCheckpointRestores(f"No checkpoint of {checkpoints.directory} restores (steps "
                                    f"{skipped}).")
  finally:
    checkpoints.close()


def _fields(allow_eval_changes: bool) -> tuple[str, ...]:
  return ("model",) + validate.FORMAT_FIELDS + (() if allow_eval_changes
                                                else validate.EVAL_FIELDS)


def _check_output(c: ml_collections.ConfigDict, path: pathlib.Path) -> None:
  """An earlier result at `path` is replaced only by an evaluation of the same config."""
  if not path.exists():
    return
  earlier = files.read_json(path, "the earlier evaluation")
  recorded = earlier.get("config") if isinstance(earlier, dict) else None
  changed = (validate.differences(recorded, validate.as_json(c), _fields(False))
             if isinstance(recorded, dict) else None)
  if changed is None or changed:
    why = ("records no config" if changed is None else
           f"was evaluated with another config: {validate.describe(changed)}")
    raise errors.OutputError(errors.message(
        f"{path}", f"an earlier result that {why}", "move it aside to evaluate again"))


class Checked(NamedTuple):
  """What `check` built: the evaluation's mesh and tokenizer."""
  mesh: jax.sharding.Mesh
  tok: Any


def check(c: ml_collections.ConfigDict, workdir: str | pathlib.Path, step: int | None = None,
          allow_eval_changes: bool = False) -> Checked:
  """Checks an evaluation before any work, writing nothing: `c`'s values and mesh, the run
  folder and its checkpoints, that `c` is the config the run trained with (model, formatting
  and, unless `allow_eval_changes`, the eval settings), and that an earlier result of the step
  would not be replaced by another config's."""
  workdir = pathlib.Path(workdir)
  validate.config(c)
  if not c.evals:
    raise errors.ConfigError(errors.message("evals", "lists no evaluator",
                                            f"valid types: {sorted(evaluators.EVALUATORS)}"))
  with errors.expected():
    evaluators.check(c)
    build.question_kinds(c)
  mesh = validate.mesh(c, batches=())
  validate.workdir(workdir, must_exist=True)
  steps = validate.checkpoint_steps(workdir)
  if not steps:
    raise errors.InputError(errors.message(
        f"--workdir {workdir}", "holds no checkpoint", "train first (python train.py ... "
        "--workdir DIR)"))
  if step is not None and step not in steps:
    raise errors.ConfigError(errors.message(f"--step={step}", "no checkpoint of that step",
                                            f"saved: {steps}"))
  saved = validate.saved_config(workdir)
  if saved is None:
    raise errors.InputError(errors.message(
        f"--workdir {workdir}", f"has no {validate.CONFIG_FILE} to check the config against",
        "evaluate a run trained by train.py"))
  todo = "pass the run's config"
  validate.same_run(c, workdir, saved, _fields(allow_eval_changes), "evaluating",
                    todo + ("" if allow_eval_changes else
                            " (--allow_eval_changes for other eval settings)"))
  with errors.expected():
    tok = build.tokenizer(c)
  validate.same_vocabulary(c, workdir, saved, tok.fingerprint(), "evaluating", todo)
  _check_output(c, workdir / "eval" / f"{step if step is not None else steps[-1]}.json")
  return Checked(mesh, tok)


def evaluate(c: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             step: int | None = None, allow_eval_changes: bool = False,
             checked: Checked | None = None) -> dict[str, Any]:
  """Runs every evaluator of `c.evals` on the checkpoint at `step` (default: the newest) and
  writes their results, merged, with the config, to WORKDIR/eval/<step>.json. `checked`:
  `check(c, workdir, step, allow_eval_changes)`'s result, if the caller checked already."""
  workdir = pathlib.Path(workdir)
  mesh, tok = checked or check(c, workdir, step, allow_eval_changes)
  with errors.expected():
    config = build.model_config(c, tok.vocab_size)
    model = mllm.MLLM(config)
    # Built before any checkpoint is read: their settings fail first.
    built = evaluators.build(evaluators.Context(c, model, config, tok, mesh))
    source = build.data_source(c, c.data.eval_split)
  fmt = build.formatter(c, c.train.task, config, tok)
  spec = step_lib.model_batch(build.example_batch(fmt, source, 1))
  step, params = _restore(c, workdir, model, spec, mesh, step)
  out = workdir / "eval"
  _check_output(c, out / f"{step}.json")  # A fallback step's result, too.
  result = {"step": step, "split": c.data.eval_split, "dataset": c.data.dataset,
            "kinds": list(build.question_kinds(c)) or "all"}
  lines = [f"step {step}  {c.data.dataset} / {c.data.eval_split}"]
  with jax.set_mesh(mesh), sharding.axis_rules():
    for name, (evaluator, _) in built.items():
      scores = evaluator.run(params)
      clash = sorted(set(scores) & set(result))
      if clash:
        raise ValueError(f"evals.{name} reports {clash}, which another evaluator (or the "
                         "step's record) reports too; list each evaluator once.")
      result.update(scores)
      lines += evaluator.lines(scores)
  result["config"] = validate.as_json(c)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{step}.json").write_text(json.dumps(result, indent=1))
  print("\n".join(lines))
  return result
