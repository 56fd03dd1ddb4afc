"""Checkpoints with orbax: parameters, optimizer state and the data iterator's position.

They are separate items, so evaluation restores the parameters alone. Restoring takes targets of
`jax.ShapeDtypeStruct(..., sharding=...)`, so a checkpoint written on one mesh restores onto
another. Saves are asynchronous; `wait` blocks until the last is durable.

A checkpoint whose files cannot be read (truncated or missing after a crash, a partial copy, bit
rot) raises `UnreadableCheckpoint` (one line: which step, why), and training moves it aside,
never deleting it, into `<directory>.unreadable/<step>` before going on from the newest
checkpoint before it. A checkpoint that reads but does not fit the target (another model or
optimizer: orbax's ValueError) is not damaged and raises as it is.
"""
import pathlib
import shutil
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mmjax import errors
from mmjax.training.state import TrainState


# Orbax saves a replicated array replica-parallel (off GPUs): one slice per device, each written
# by its own replica. For an array of a few kilobytes that is only an eager slice per device —
# thousands per save of a small model, each new shape compiled (on a CPU, a third of a tiny
# run's wall time) — so arrays whose slices would be smaller than this are written whole by one
# replica; the large arrays replica-parallel saving is for keep it.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _type_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
  """Orbax's handlers, with jax.Array's saving small arrays whole (`MIN_REPLICA_SLICE_BYTES`)."""
  default = ocp.type_handlers.get_type_handler(jax.Array)
  array = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
      array_metadata_store=getattr(default, "_array_metadata_store", None))
  return ocp.type_handlers.create_type_handler_registry(
      *[(t, ocp.type_handlers.get_type_handler(t)) for t in ocp.type_handlers.supported_types()
        if t is not jax.Array], (jax.Array, array))


def _restore_to(abstract: Any, shardings: Any) -> ocp.args.PyTreeRestore:
  """Restores `abstract`'s arrays placed with `shardings`."""
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  return ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(
      target))


class UnreadableCheckpoint(errors.Error, RuntimeError):
  """A checkpoint's files could not be read."""

  def __init__(self, step: int, directory: pathlib.Path, reason: str):
    self.step, self.directory, self.reason = step, directory, reason
    super().__init__(f"Checkpoint step {step} in {directory} does not restore ({reason}).")


def _damaged(error: BaseException) -> bool:
  """Whether a restore failed reading the files (tensorstore's plain Exception, a missing or
  unreadable file), not because the checkpoint holds another tree (ValueError) or memory ran
  out."""
  return type(error) is Exception or isinstance(error, (OSError, EOFError))


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
    handlers = _type_handlers()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers={
            "params": ocp.PyTreeCheckpointHandler(type_handler_registry=handlers),
            "opt_state": ocp.PyTreeCheckpointHandler(type_handler_registry=handlers),
            "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state: TrainState, data_iterator: grain.DatasetIterator | None) -> None:
    items = {"params": ocp.args.PyTreeSave(state.params),
             "opt_state": ocp.args.PyTreeSave(state.opt_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(int(state.step), args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract: TrainState, shardings: TrainState,
              data_iterator: grain.DatasetIterator | None = None) -> TrainState:
    """The state at `step`, each array placed with `shardings`; `data_iterator` (if given) is
    moved to where it was at that step."""
    items = {"params": _restore_to(abstract.params, shardings.params),
             "opt_state": _restore_to(abstract.opt_state, shardings.opt_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = self._restore(step, items)
    return TrainState(step=jax.device_put(jnp.asarray(step, jnp.int32), shardings.step),
                      params=out["params"], opt_state=out["opt_state"])

  def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
    out = self._restore(step, {"params": _restore_to(abstract_params, shardings)})
    return out["params"]

  def _restore(self, step: int, items: dict[str, Any]) -> Any:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # What the storage layer raises for damaged files (see _damaged).
      if not _damaged(e):
        raise
      raise UnreadableCheckpoint(step, self.directory, _reason(e)) from e

  @property
  def aside(self) -> pathlib.Path:
    """Where unreadable checkpoints are moved."""
    return self.directory.with_name(self.directory.name + ".unreadable")

  def move_aside(self, step: int) -> pathlib.Path:
    """Moves checkpoint `step` out of the managed directory (never deletes it; process 0 moves,
    every process waits for it); returns where."""
    self.manager.wait_until_finished()
    target, n = self.aside / str(step), 1
    while target.exists():  # The same step damaged twice keeps both copies.
      target, n = self.aside / f"{step}.{n}", n + 1
    if jax.process_index() == 0:
      self.aside.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"mmjax_move_aside_{step}")
    self.manager.reload()
    return target

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
