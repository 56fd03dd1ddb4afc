"""Checkpoints with orbax: the train state (sharded arrays) and the data iterator's position.

Restoring takes a target of `jax.ShapeDtypeStruct(..., sharding=...)`, so a checkpoint written
on one mesh restores onto another. Saves are asynchronous; `wait` blocks until the last is
durable (before exiting, or before a preemption deadline).
"""
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the newest `keep` checkpoints of `directory`, one per saved step."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    if keep < 1:
      raise ValueError(f"keep={keep}: at least one checkpoint must be kept.")
    self.manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           force: bool = True) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, shardings: Any,
              data_iterator: grain.DatasetIterator | None = None) -> Any:
    """The state at `step`, each array placed with `shardings`; `data_iterator` (if given) is
    moved to where it was at that step."""
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_state, shardings)
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
