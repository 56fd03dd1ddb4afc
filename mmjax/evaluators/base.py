"""The evaluator interface and its registry by name.

An evaluator scores a model's parameters on held-out data: VQA exact-match accuracy by question
family and kind (`vqa`), the answer-token loss and perplexity (`loss`), and later retrieval for
BLIP-style models. The config lists the evaluators to run as named blocks, big_vision's way:

  c.evals.vqa = ml_collections.ConfigDict({"type": "vqa", "every": 0})
  c.evals.loss = ml_collections.ConfigDict({"type": "loss", "every": 500})

`type` picks the registered evaluator, `every` how often it runs during training (steps; 0: only
by eval.py, which runs every listed evaluator). An evaluator reads what it needs when it is
built (questions, prompts; a bad setting fails there, before any checkpoint is read) and then
scores any parameters with `run`. Each evaluator file registers itself (`register`); every module
of this package is imported by its `__init__`, so a new evaluator is its file and its tests.
"""
import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections

from mmjax import registry
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.models import mllm


@dataclasses.dataclass(frozen=True)
class Context:
  """What every evaluator is built from: the config, the model and its pieces, the mesh."""
  c: ml_collections.ConfigDict
  model: mllm.MLLM
  config: mllm.MLLMConfig
  tok: tokenizer_lib.Tokenizer
  mesh: jax.sharding.Mesh


@runtime_checkable
class Evaluator(Protocol):
  """What an evaluator provides (built as `cls(context, block)`)."""

  def run(self, params: Any) -> dict[str, Any]:
    """The scores of `params` (placed on the context's mesh), JSON-serialisable; called inside
    the mesh and the logical-axis rules."""

  def lines(self, result: dict[str, Any]) -> list[str]:
    """`result` as lines of eval.py's table."""


REGISTRY: dict[str, Callable[[Context, ml_collections.ConfigDict], Evaluator]] = {}


def register(name: str, cls: Callable[[Context, ml_collections.ConfigDict], Evaluator]) -> None:
  registry.admit(REGISTRY, "evaluator", name, cls, "Evaluator", ("run", "lines"))
  REGISTRY[name] = cls


def check(c: ml_collections.ConfigDict) -> None:
  """Refuses an unknown evaluator type, one listed twice or a negative `every`, naming the
  block."""
  seen: dict[str, str] = {}
  for name, block in c.evals.items():
    if block.type in seen:
      raise ValueError(f"evals.{seen[block.type]} and evals.{name} are both {block.type!r}: "
                       "list each evaluator once.")
    seen[block.type] = name
    if block.type not in REGISTRY:
      raise ValueError(f"evals.{name}.type={block.type!r} is not an evaluator; valid: "
                       f"{sorted(REGISTRY)}.")
    if block.every < 0:
      raise ValueError(f"evals.{name}.every={block.every} must be 0 (eval.py only) or a "
                       "number of steps.")


def build(context: Context, during_training: bool = False) -> dict[str, tuple[Evaluator, int]]:
  """The config's evaluators by block name, each with its `every`; `during_training`: only
  those that run during training (every > 0)."""
  check(context.c)
  return {name: (REGISTRY[block.type](context, block), block.every)
          for name, block in context.c.evals.items()
          if not during_training or block.every > 0}


def scalars(name: str, result: dict[str, Any]) -> dict[str, float]:
  """The numbers of `result` (nested dicts flattened) as metrics named `name/key[/key]`."""
  out = {}
  for key, value in result.items():
    if isinstance(value, dict):
      out.update(scalars(f"{name}/{key}", value))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[f"{name}/{key}"] = float(value)
  return out
