"""The jitted train step: forward, backward over micro-batches, one optimizer update."""
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax import sharding
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.training.state import TrainState

MODEL_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_mask", *towers.ALL_INPUTS,
              "image_tokens")  # With several images a row: each image's visual tokens.


def model_batch(batch: dict[str, Any]) -> dict[str, Any]:
  """The arrays the model reads (the pipeline's bookkeeping fields stay on the host)."""
  return {k: v for k, v in batch.items() if k in MODEL_KEYS}


def next_token_sums(model: nn.Module, params: Any, batch: dict[str, jax.Array]
                    ) -> dict[str, jax.Array]:
  """The MLLM's summed answer-token loss and answer-token count of a batch."""
  logits, _ = model.apply({"params": params}, model_batch(batch))
  out = mllm.next_token_loss(logits, batch["targets"], batch["loss_mask"])
  return {"loss_sum": out["loss_sum"], "tokens": out["tokens"]}


# A stage's loss: (model, params, batch) → {"loss_sum", "tokens"}; the step divides the two.
Sums = Callable[[nn.Module, Any, dict[str, jax.Array]], dict[str, jax.Array]]


def loss_and_grads(model: nn.Module, params: Any, batch: dict[str, jax.Array],
                   accum_steps: int, sums: Sums = next_token_sums
                   ) -> tuple[Any, dict[str, jax.Array]]:
  """Gradients of the summed loss (`sums`; the answer tokens') over `accum_steps` micro-batches.

  The batch's leading axis is split into micro-batches run one after another (a scan), so peak
  activation memory is that of one micro-batch; sums, not means, are accumulated so the result
  weights every answer token equally however the batch is split.
  """

  def micro(b):
    def loss_fn(p):
      out = sums(model, p, b)
      return out["loss_sum"], out
    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, {"loss_sum": out["loss_sum"], "tokens": out["tokens"]}

  if accum_steps == 1:
    return micro(batch)
  rows = jax.tree.leaves(batch)[0].shape[0]
  if rows % accum_steps:
    raise ValueError(f"Batch of {rows} rows does not split into grad_accum_steps={accum_steps}.")
  split = jax.tree.map(lambda x: x.reshape(accum_steps, rows // accum_steps, *x.shape[1:]), batch)

  def body(total, b):
    return jax.tree.map(jnp.add, total, micro(b)), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro, jax.tree.map(lambda x: x[0], split)))
  total, _ = jax.lax.scan(body, zeros, split)
  return total


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, accum_steps: int = 1,
               trainable: Any = None, sums: Sums = next_token_sums
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the mean loss of the global batch: `sums`' loss over its count
  (the MLLM's: per answer token; stage 0's: per asked question).

  `trainable` (a bool tree like the params) restricts the reported gradient norm to the
  parameters that train.
  """
  grads, totals = loss_and_grads(model, state.params, batch, accum_steps, sums)
  tokens = jnp.maximum(totals["tokens"], 1.0)
  grads = jax.tree.map(lambda g: g / tokens, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  shown = grads if trainable is None else jax.tree.map(
      lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
  loss, grad_norm = totals["loss_sum"] / tokens, optax.tree.norm(shown)
  # A finite loss can still come with an update that overflows the parameters; both are checked
  # so that no checkpoint ever holds a non-finite state.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))
  metrics = {"loss": loss, "tokens": totals["tokens"], "grad_norm": grad_norm, "finite": finite}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def compile_ahead(step_fn: Any, abstract_state: TrainState, batch_spec: dict[str, Any],
                  mesh: jax.sharding.Mesh) -> Any:
  """`step_fn` (jitted, taking (state, batch)) compiled for `batch_spec`'s shapes (global rows,
  split over the mesh's batch axes) before any data is read."""
  spec = sharding.data_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in batch_spec.items()}
  with jax.set_mesh(mesh), sharding.axis_rules():
    return step_fn.lower(abstract_state, batch).compile()


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: nn.Module
              ) -> dict[str, jax.Array]:
  """Summed answer-token loss and token count of a batch (for loss / perplexity)."""
  return next_token_sums(model, params, batch)
