"""AdamW with warm-up + cosine decay and gradient clipping, applied only to trainable parameters.

Which parameters train is a regular expression over '/'-joined parameter paths (LLaVA stage 1:
`^projector/`, stage 2: everything but the vision tower). Frozen parameters go through
`optax.set_to_zero`, so they get no optimizer state at all (no Adam moments) and never move.
"""
import re
from typing import Any

import jax
import optax


def path_names(params: Any) -> Any:
  """A tree like `params` whose leaves are their '/'-joined paths."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path), params)


def trainable_mask(params: Any, pattern: str) -> Any:
  """True where the parameter's path matches `pattern` (re.search). Raises if none does."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"trainable pattern {pattern!r} is not a regular expression: {e}.") from None
  mask = jax.tree.map(lambda name: bool(regex.search(name)), path_names(params))
  if not any(jax.tree.leaves(mask)):
    examples = jax.tree.leaves(path_names(params))[:8]
    raise ValueError(f"trainable pattern {pattern!r} matches no parameter; paths look like "
                     f"{examples}.")
  return mask


def schedule(lr: float, warmup_steps: int, total_steps: int,
             end_fraction: float = 0.0) -> optax.Schedule:
  """Linear warm-up from 0 to `lr`, then cosine decay to `end_fraction * lr` at `total_steps`."""
  if total_steps < 1 or not 0 <= warmup_steps < total_steps:
    raise ValueError(f"Need 0 <= warmup_steps ({warmup_steps}) < total_steps ({total_steps}).")
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps,
                                            end_value=lr * end_fraction)


def optimizer(params: Any, *, lr: optax.Schedule, weight_decay: float, grad_clip: float,
              trainable: str | Any, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> optax.GradientTransformation:
  """Clipping (by the global norm of the trainable gradients) + AdamW on the trainable params.

  `trainable` is a pattern (`trainable_mask`) or a bool tree like `params`. Weight decay skips
  biases, norm scales and other vectors (as LLaVA/HF Trainer do).
  """
  mask = trainable_mask(params, trainable) if isinstance(trainable, str) else trainable
  decay = jax.tree.map(lambda p: p.ndim > 1, params)
  train = optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
      optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay))
  labels = jax.tree.map(lambda m: "train" if m else "frozen", mask)
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()}, labels)
