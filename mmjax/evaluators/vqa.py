"""VQA accuracy (`vqa`): exact-match accuracy of KV-cached greedy answers, by question family
and kind, on the first `data.eval_examples` images of `data.eval_split` (their questions of
`data.kinds`), with the visual tokens each image cost; `eval.max_new_tokens` and
`eval.batch_size` bound the generation."""
import collections
import dataclasses
import time
from typing import Any

import ml_collections
import numpy as np

from mmjax import sampling
from mmjax.data import pipeline
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.data.datasets import questions
from mmjax.evaluators import base
from mmjax.training import build


@dataclasses.dataclass
class _Asked:
  """The evaluation's questions as generation inputs, one entry per question."""
  prompts: list[list[int]]
  views: list[dict[str, np.ndarray]]
  positions: list[np.ndarray]  # M-RoPE rows; empty for other policies.
  truth: list[tuple[str, str, str]]  # (family, kind, answer).
  image_tokens: list[int]  # Visual tokens of each image (not question).
  refused: list[int]  # Images the resolution policy refused (ImageRefused): not asked.


def _row_views(view: dict[str, np.ndarray], tokens: int, policy: Any, max_images: int
               ) -> dict[str, np.ndarray]:
  """One image's views as a row of the model: as they are, or with several images a row, first
  of `max_images` (blanks after it) with their `image_tokens`."""
  if max_images == 1:
    return view
  blank = policy.blank()
  out = {k: np.stack([view[k]] + [blank[k]] * (max_images - 1)) for k in view}
  out["image_tokens"] = np.asarray([tokens] + [0] * (max_images - 1), np.int32)
  return out


def ask(c, tok, source, config) -> _Asked:
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
      n_tokens = int(config.image_tokens({k: v[None] for k, v in view.items()})[0])
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
      asked.views.append(_row_views(view, n_tokens, policy, config.max_images))
      asked.truth.append((family.decode(), kind.decode(), answer.decode()))
  if not asked.image_tokens:
    raise ValueError(f"The resolution policy refused all {len(asked.refused)} evaluated images of "
                     f"{c.data.eval_split} ({c.model.tower.name}); nothing to evaluate.")
  return asked


def accuracy(c, model, params, tok, asked: _Asked, config) -> dict[str, Any]:
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


class VQA:
  """The questions are read and encoded when the evaluator is built (an answer longer than
  `eval.max_new_tokens` fails there, before any checkpoint is read)."""

  def __init__(self, context: base.Context, block: ml_collections.ConfigDict):
    del block
    self.context = context
    c = context.c
    self.asked = ask(c, context.tok, build.data_source(c, c.data.eval_split), context.config)

  def run(self, params: Any) -> dict[str, Any]:
    x = self.context
    return accuracy(x.c, x.model, params, x.tok, self.asked, x.config)

  def lines(self, result: dict[str, Any]) -> list[str]:
    out = [f"{'question family':<22}{'accuracy':>10}{'questions':>11}"]
    for family, acc in result["accuracy"].items():
      out.append(f"{family:<22}{acc:>10.3f}{result['questions'][family]:>11}")
    for kind, acc in result["accuracy_by_kind"].items():
      out.append(f"  {kind:<20}{acc:>10.3f}")
    out.append(f"visual tokens per image {result['visual_tokens_per_image']:.1f}")
    if result["refused_images"]:
      out.append(f"images refused by the resolution policy (not asked): "
                 f"{len(result['refused_images'])}, first {result['refused_images'][:5]}")
    out.append(f"generation {result['generated_tokens_per_sec']:.1f} tokens/s")
    return out


base.register("vqa", VQA)
