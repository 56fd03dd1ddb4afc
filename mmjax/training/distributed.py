"""Multi-process start-up: `jax.distributed.initialize()` from launcher environments or flags."""
import os

import jax
from absl import flags

_LAUNCHER_VARIABLES = ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                       "JAX_COORDINATOR_ADDRESS")


def define_flags() -> None:
  flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (default: when a "
                    "multi-process launcher is detected or --coordinator_address is given).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Processes in the job.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "A peer silent this long is dead.")
  flags.DEFINE_integer("shutdown_timeout_seconds", 300, "How long exit waits for the peers.")


def initialize() -> None:
  f = flags.FLAGS
  explicit = f.coordinator_address is not None
  wanted = f.distributed if f.distributed is not None else (
      explicit or any(v in os.environ for v in _LAUNCHER_VARIABLES))
  if not wanted:
    return
  if explicit:
    if f.num_processes is None or f.process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id.")
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                               heartbeat_timeout_seconds=f.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=f.shutdown_timeout_seconds)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=f.heartbeat_timeout_seconds,
                               shutdown_timeout_seconds=f.shutdown_timeout_seconds)
