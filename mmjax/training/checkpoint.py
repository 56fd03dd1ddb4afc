"""Checkpoints with orbax: parameters, optimizer state and the data iterator's position.

They are separate items, so evaluation restores the parameters alone. Restoring takes targets of
`jax.ShapeDtypeStruct(..., sharding=...)`, so a checkpoint written on one mesh restores onto
another. Saves are asynchronous; `wait` blocks until the last is durable.

A checkpoint that does not restore (files truncated or missing after a crash, a partial copy,
bit rot) is moved aside, never deleted, into `<directory>.unreadable/<step>`, and the restore
raises `UnreadableCheckpoint` (one line: which step, why, where it went), so callers go on from
the newest checkpoint before it.
"""
import pathlib
import shutil
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mmjax.training.state import TrainState


def _target(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


class UnreadableCheckpoint(RuntimeError):
  """A checkpoint failed to restore and was moved aside (`moved_to`)."""

  def __init__(self, step: int, directory: pathlib.Path, moved_to: pathlib.Path, reason: str):
    self.step, self.moved_to = step, moved_to
    super().__init__(f"Checkpoint step {step} in {directory} does not restore ({reason}); moved "
                     f"it to {moved_to}.")


def _reason(error: BaseException) -> str:
  """The first line of an error (orbax's and tensorstore's run to pages), at most 160 chars."""
  text = next((line.strip() for line in str(error).splitlines() if line.strip()),
              type(error).__name__)
  return f"{type(error).__name__}: {text[:160]}{'…' if len(text) > 160 else ''}"


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
    out = self._restore(step, items)
    return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), shardings.step),
                      params=out["params"], opt_state=out["opt_state"])

  def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
    out = self._restore(step, {"params": ocp.args.StandardRestore(
        _target(abstract_params, shardings))})
    return out["params"]

  def _restore(self, step: int, items: dict[str, Any]) -> Any:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Whatever the storage layer raises for damaged files.
      raise UnreadableCheckpoint(step, self.directory, self.move_aside(step), _reason(e)) from e

  def move_aside(self, step: int) -> pathlib.Path:
    """Moves checkpoint `step` out of the managed directory (never deletes it); returns where."""
    self.manager.wait_until_finished()
    aside = self.directory.with_name(self.directory.name + ".unreadable")
    aside.mkdir(parents=True, exist_ok=True)
    target, n = aside / str(step), 1
    while target.exists():  # The same step damaged twice keeps both copies.
      target, n = aside / f"{step}.{n}", n + 1
    shutil.move(str(self.directory / str(step)), str(target))
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
