"""Answer-token loss and perplexity (`loss`) of the multi-turn conversations (`train.task`'s
format) of the first `data.eval_examples` images of `data.eval_split`, every image counted
once."""
import math
from typing import Any

import jax
import ml_collections
import numpy as np

from mmjax import sharding
from mmjax.data import pipeline
from mmjax.evaluators import base
from mmjax.training import build
from mmjax.training import step as step_lib


def loss(c, model, params, tok, source, config, mesh, step=None) -> dict[str, float]:
  """Answer-token loss and perplexity of the eval images' multi-turn conversations; `step` is
  the jitted `step.eval_step` (made here when None)."""
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
  step = step or jax.jit(lambda p, b: step_lib.eval_step(p, b, model=model))
  total, tokens = 0.0, 0.0
  for n, host in enumerate(loader):
    first = n * rows + jax.process_index() * local  # make_loader's rows of this process.
    real = np.arange(first, first + local) < examples
    host["loss_mask"] = host["loss_mask"] * real[:, None].astype(host["loss_mask"].dtype)
    out = step(params, pipeline.to_global(step_lib.model_batch(host), mesh))
    total, tokens = total + float(out["loss_sum"]), tokens + float(out["tokens"])
  loss = total / max(tokens, 1.0)
  return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "loss_tokens": tokens}


class Loss:

  def __init__(self, context: base.Context, block: ml_collections.ConfigDict):
    del block
    self.context = context
    self.source = build.data_source(context.c, context.c.data.eval_split)
    # One compiled step for every run during training.
    self.step = jax.jit(lambda p, b: step_lib.eval_step(p, b, model=context.model))

  def run(self, params: Any) -> dict[str, Any]:
    x = self.context
    return loss(x.c, x.model, params, x.tok, self.source, x.config, x.mesh, self.step)

  def lines(self, result: dict[str, Any]) -> list[str]:
    return [f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  "
            f"({result['loss_tokens']:.0f} answer tokens)"]


base.register("loss", Loss)
