"""Evaluation behind `eval.py`: the config's evaluators (`c.evals`, `mmjax.evaluators`: VQA
accuracy by question family and kind, answer-token loss and perplexity) on one checkpoint.

Runs on whatever mesh the config names (it may differ from training's): parameters are restored
straight onto it. Writes `WORKDIR/eval/<step>.json` (the evaluators' results, merged) and prints
a table.
"""
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
from absl import logging
import ml_collections

from mmjax import evaluators
from mmjax import sharding
from mmjax.models import mllm
from mmjax.training import build
from mmjax.training import checkpoint as checkpoint_lib
from mmjax.training import loop
from mmjax.training import step as step_lib


def _restore(c, workdir, model, spec, mesh, step):
  """The parameters of checkpoint `step`, or of the newest one that restores when `step` is None
  (a damaged newer one is moved aside with a one-line warning, as training's resume does)."""
  checkpoints = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints")
  if not checkpoints.all_steps():
    raise FileNotFoundError(f"No checkpoint in {checkpoints.directory}; train first "
                            "(python train.py ... --workdir DIR).")
  if step is not None and step not in checkpoints.all_steps():
    raise ValueError(f"No checkpoint for step {step}; saved: {checkpoints.all_steps()}.")
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


def evaluate(c: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             step: int | None = None) -> dict[str, Any]:
  """Runs every evaluator of `c.evals` on the checkpoint at `step` (default: the newest) and
  writes their results, merged, to WORKDIR/eval/<step>.json."""
  workdir = pathlib.Path(workdir)
  mesh = loop.mesh_from_config(c)
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  model = mllm.MLLM(config)
  if not c.evals:
    raise ValueError("c.evals lists no evaluator; valid types: "
                     f"{sorted(evaluators.EVALUATORS)}.")
  # Built before any checkpoint is read: their settings fail first.
  built = evaluators.build(evaluators.Context(c, model, config, tok, mesh))
  source = build.data_source(c, c.data.eval_split)
  fmt = build.formatter(c, c.train.task, config, tok)
  spec = step_lib.model_batch(build.example_batch(fmt, source, 1))
  step, params = _restore(c, workdir, model, spec, mesh, step)
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
  out = workdir / "eval"
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{step}.json").write_text(json.dumps(result, indent=1))
  print("\n".join(lines))
  return result
