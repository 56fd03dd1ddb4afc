"""XLA flags the entry points (train.py, eval.py) set before JAX starts.

XLA reads `XLA_FLAGS` once, when the first backend is created, so `apply` must run before
anything imports jax. A flag already in `XLA_FLAGS` is left as the user set it.

  --xla_cpu_experimental_ynn_fusion_type=dot: YNNPACK fuses only the dots on CPU (by default it
      also takes elementwise and reduction fusions). The default config's train step is 7 %
      faster with it on a 2-core CPU (0.571 s against 0.613, docs/results); other backends ignore
      it.
      The flag belongs to the pinned jaxlib: an XLA that does not know a flag refuses to start.
"""
import os
import sys

DEFAULTS = {"--xla_cpu_experimental_ynn_fusion_type": "dot"}


def with_defaults(flags: str) -> str:
  """`flags` (an XLA_FLAGS value) with every default flag it does not set appended."""
  given = flags.split()
  names = {f.split("=", 1)[0] for f in given}
  return " ".join(given + [f"{k}={v}" for k, v in DEFAULTS.items() if k not in names])


def apply() -> None:
  """Adds the defaults to this process's XLA_FLAGS (and its children's)."""
  current = os.environ.get("XLA_FLAGS", "")
  if with_defaults(current) == current:
    return  # Already there (e.g. a test process that runs a command's main after importing jax).
  if "jax" in sys.modules:
    raise RuntimeError("mmjax.xla_flags.apply() must run before jax is imported: XLA has "
                       "read XLA_FLAGS already, and the flags would not take effect.")
  os.environ["XLA_FLAGS"] = with_defaults(os.environ.get("XLA_FLAGS", ""))
