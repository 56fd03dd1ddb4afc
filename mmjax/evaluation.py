"""Evaluation behind `eval.py`: exact-match accuracy by question family and kind, from KV-cached
greedy generation, and the answer-token loss / perplexity, for one checkpoint.

Runs on whatever mesh the config names (it may differ from training's): parameters are restored
straight onto it. Writes `WORKDIR/eval/<step>.json` and prints a table.
"""
import collections
import dataclasses
import json
import math
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
from absl import logging
import ml_collections
import numpy as np

from mmjax import sampling
from mmjax import sharding
from mmjax.data import pipeline
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.data.datasets import questions
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


@dataclasses.dataclass
class _Asked:
  """The evaluation's questions as generation inputs, one entry per question."""
  prompts: list[list[int]]
  views: list[dict[str, np.ndarray]]
  positions: list[np.ndarray]  # M-RoPE rows; empty for other policies.
  truth: list[tuple[str, str, str]]  # (family, kind, answer).
  image_tokens: list[int]  # Visual tokens of each image (not question).
  refused: list[int]  # Images the resolution policy refused (ImageRefused): not asked.


def _ask(c, tok, source, config) -> _Asked:
  """The prompts and views of every question of the first `eval_examples` images. Raises if a
  reference answer is longer than `eval.max_new_tokens` (exact match would count it wrong
  whatever the model says) — before any checkpoint is read."""
  policy = build.policy(c, config)
  kinds = build.question_kinds(c)
  asked = _Asked([], [], [], [], [], [])
  for i in range(min(c.data.eval_examples, len(source))):
    record = source[i]
    try:
      view = policy(record["image"])
      n_tokens = int(config.visual_tokens({k: v[None] for k, v in view.items()})[0])
    except pipeline.ImageRefused:  # Dropped and counted, as the training pipeline does.
      asked.refused.append(i)
      continue
    asked.image_tokens.append(n_tokens)
    qa = record["qa"]
    for family, kind, question, answer in zip(qa["family"], qa["kind"], qa["question"],
                                              qa["answer"]):
      if kinds and kind.decode() not in kinds:
        continue
      needed = len(tok.encode(answer.decode())) + 1  # With its EOS.
      if needed > c.eval.max_new_tokens:
        raise ValueError(f"eval.max_new_tokens={c.eval.max_new_tokens} cannot hold the answer "
                         f"{answer.decode()!r} (image {i}, {needed} tokens with EOS); raise it.")
      turn = [{"from": "human", "value": tokenizer_lib.IMAGE_TAG + "\n" + question.decode()}]
      prompt = tokenizer_lib.encode_prompt(c.data.template, turn, tok, num_images=1,
                                           num_image_tokens=n_tokens)
      asked.prompts.append(prompt)
      if policy.mrope:
        asked.positions.append(pipeline.mrope_row(prompt, len(prompt), tok.image_id,
                                                  view["image_grid"], policy.merge_size))
      asked.views.append(view)
      asked.truth.append((family.decode(), kind.decode(), answer.decode()))
  if not asked.image_tokens:
    raise ValueError(f"The resolution policy refused all {len(asked.refused)} evaluated images of "
                     f"{c.data.eval_split} ({c.model.tower.name}); nothing to evaluate.")
  return asked


def _accuracy(c, model, params, tok, asked: _Asked, config) -> dict[str, Any]:
  """Greedy answers to the `asked` questions, scored by exact match."""
  prompts, views, positions, truth = asked.prompts, asked.views, asked.positions, asked.truth
  mrope = bool(positions)
  correct, generated, seconds = [], 0, 0.0
  size = c.eval.batch_size
  # Every batch padded to the longest prompt: one compiled shape, and a one-question prompt is
  # not prefilled at data.max_len, the length of a whole training conversation.
  longest = max(map(len, prompts))
  for s in range(0, len(prompts), size):
    batch_prompts, batch_views = prompts[s:s + size], views[s:s + size]
    batch_positions = positions[s:s + size] if mrope else None
    pad = size - len(batch_prompts)  # Full batches keep one compiled shape.
    batch_prompts += batch_prompts[:1] * pad
    batch_views += batch_views[:1] * pad
    if mrope:
      batch_positions += batch_positions[:1] * pad
    tick = time.perf_counter()
    tokens, lengths = sampling.generate(model, {"params": params}, batch_prompts,
                                        {k: np.stack([v[k] for v in batch_views])
                                         for k in batch_views[0]},
                                        max_new_tokens=c.eval.max_new_tokens, eos_id=tok.eos_id,
                                        pad_id=tok.pad_id, bucket=longest,
                                        positions=batch_positions)
    seconds += time.perf_counter() - tick
    for row in range(size - pad):
      answer = tok.decode(tokens[row, :lengths[row]])
      correct.append(questions.normalize_answer(answer) ==
                     questions.normalize_answer(truth[s + row][2]))
      generated += int(lengths[row])
  by_family, by_kind = collections.defaultdict(list), collections.defaultdict(list)
  for (family, kind, _), ok in zip(truth, correct):
    by_family[family].append(ok)
    by_kind[kind].append(ok)
  mean = lambda d: {k: float(np.mean(v)) for k, v in sorted(d.items())}
  return {"accuracy": mean(by_family), "accuracy_by_kind": mean(by_kind),
          "questions": {k: len(v) for k, v in sorted(by_family.items())},
          # What the dynamic policies trade accuracy against: visual tokens an image costs.
          "visual_tokens_per_image": float(np.mean(asked.image_tokens)),
          "visual_token_budget": config.max_visual_tokens,
          "refused_images": asked.refused,
          "generated_tokens_per_sec": generated / max(seconds, 1e-9)}


def _loss(c, model, params, tok, source, config, mesh) -> dict[str, float]:
  """Answer-token loss and perplexity of the eval images' multi-turn conversations."""
  fmt = build.formatter(c, c.train.task, config, tok)
  examples = min(c.data.eval_examples, len(source))
  rows = max(min(c.eval.batch_size, examples) // sharding.num_batch_shards(mesh), 1) * \
      sharding.num_batch_shards(mesh)
  # The loader drops a last partial batch (static shapes), so the images are padded to whole
  # batches with copies of the first, whose answer tokens are masked out: every evaluated image
  # counts once, also when there are fewer of them than the mesh has batch shards.
  padded = -(-examples // rows) * rows
  sub = [source[i if i < examples else 0] for i in range(padded)]
  loader = pipeline.make_loader(sub, fmt, global_batch_size=rows, seed=0, shuffle=False,
                                num_epochs=1)
  local = rows // jax.process_count()
  step = jax.jit(lambda p, b: step_lib.eval_step(p, b, model=model))
  total, tokens = 0.0, 0.0
  for n, host in enumerate(loader):
    first = n * rows + jax.process_index() * local  # make_loader's rows of this process.
    real = np.arange(first, first + local) < examples
    host["loss_mask"] = host["loss_mask"] * real[:, None].astype(host["loss_mask"].dtype)
    out = step(params, pipeline.to_global(step_lib.model_batch(host), mesh))
    total, tokens = total + float(out["loss_sum"]), tokens + float(out["tokens"])
  loss = total / max(tokens, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "loss_tokens": tokens}


def evaluate(c: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             step: int | None = None) -> dict[str, Any]:
  """Evaluates the checkpoint at `step` (default: the newest) and writes its JSON."""
  workdir = pathlib.Path(workdir)
  mesh = loop.mesh_from_config(c)
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  model = mllm.MLLM(config)
  source = build.data_source(c, c.data.eval_split)
  fmt = build.formatter(c, c.train.task, config, tok)
  asked = _ask(c, tok, source, config)
  spec = step_lib.model_batch(build.example_batch(fmt, source, 1))
  step, params = _restore(c, workdir, model, spec, mesh, step)
  with jax.set_mesh(mesh), sharding.axis_rules():
    result = {"step": step, "split": c.data.eval_split, "dataset": c.data.dataset,
              "kinds": list(build.question_kinds(c)) or "all",
              **_accuracy(c, model, params, tok, asked, config),
              **_loss(c, model, params, tok, source, config, mesh)}
  out = workdir / "eval"
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{step}.json").write_text(json.dumps(result, indent=1))
  print(table(result))
  return result


def table(result: dict[str, Any]) -> str:
  lines = [f"step {result['step']}  {result['dataset']} / {result['split']}",
           f"{'question family':<22}{'accuracy':>10}{'questions':>11}"]
  for family, acc in result["accuracy"].items():
    lines.append(f"{family:<22}{acc:>10.3f}{result['questions'][family]:>11}")
  for kind, acc in result["accuracy_by_kind"].items():
    lines.append(f"  {kind:<20}{acc:>10.3f}")
  lines.append(f"visual tokens per image {result['visual_tokens_per_image']:.1f}")
  if result["refused_images"]:
    lines.append(f"images refused by the resolution policy (not asked): "
                 f"{len(result['refused_images'])}, first {result['refused_images'][:5]}")
  lines.append(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
               f"generation {result['generated_tokens_per_sec']:.1f} tokens/s")
  return "\n".join(lines)
