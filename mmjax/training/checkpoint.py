"""Checkpoints with orbax: parameters, optimizer state and the data iterator's position.

They are separate items, so evaluation restores the parameters alone. Restoring takes targets of
`jax.ShapeDtypeStruct(..., sharding=...)`, so a checkpoint written on one mesh restores onto
another. Saves are asynchronous; `wait` blocks until the last is durable.
"""
import pathlib
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mmjax.training.state import TrainState


def _target(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


class Checkpointer:
  """Keeps the newest `keep` checkpoints of `directory`, one per saved step."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep={keep}: at least one checkpoint must be kept.")
    self.directory = pathlib.Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("params", "opt_state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: TrainState, data_iterator: grain.DatasetIterator | None) -> None:
    items = {"params": ocp.args.StandardSave(state.params),
             "opt_state": ocp.args.StandardSave(state.opt_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(int(state.step), args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract: TrainState, shardings: TrainState,
              data_iterator: grain.DatasetIterator | None = None) -> TrainState:
    """The state at `step`, each array placed with `shardings`; `data_iterator` (if given) is
    moved to where it was at that step."""
    items = {"params": ocp.args.StandardRestore(_target(abstract.params, shardings.params)),
             "opt_state": ocp.args.StandardRestore(_target(abstract.opt_state,
                                                           shardings.opt_state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), shardings.step),
                      params=out["params"], opt_state=out["opt_state"])

  def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(_target(abstract_params, shardings))))
    return out["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
