"""Multi-process start-up: `jax.distributed.initialize()` from launcher environments or flags."""
import os

import jax
from absl import flags

from mmjax import errors

_LAUNCHER_VARIABLES = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                       "JAX_COORDINATOR_ADDRESS")


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when a "
                    "multi-process launcher is detected or --coordinator_address is given).",
                    flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes in the job.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "A peer silent this long is dead.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("shutdown_timeout_seconds", 300, "How long exit waits for the peers.",
                       lower_bound=1, flag_values=fv)


def initialize(f: flags.FlagValues) -> None:
  """`jax.distributed.initialize()` when the flags `define_flags` declared in `f` or a launcher's
  environment ask for it."""
  explicit = f.coordinator_address is not None
  wanted = f.distributed if f.distributed is not None else (
      explicit or any(v in os.environ for v in _LAUNCHER_VARIABLES))
  if not wanted:
    return
  if explicit:
    if f.num_processes is None or f.process_id is None:
      raise errors.ConfigError(errors.message(
          "--coordinator_address", "needs --num_processes and --process_id",
          "give all three, or none under a launcher"))
    if f.process_id >= f.num_processes:
      raise errors.ConfigError(errors.message(
          f"--process_id={f.process_id}", f"not below --num_processes={f.num_processes}"))
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                               heartbeat_timeout_seconds=f.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=f.shutdown_timeout_seconds)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=f.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=f.shutdown_timeout_seconds)
