"""FLOP counts of compiled steps and the measured matmul peak, for MFU."""
import time
from typing import Any

import jax
import jax.numpy as jnp


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled function, from XLA's cost analysis (0 if unavailable)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def measured_peak_flops(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
  """FLOP/s of a large `jnp.dot` on the default device: the practical peak MFU is taken against
  (on a CPU, where no nominal figure exists, this is the only meaningful one)."""
  a = jnp.ones((n, n), dtype)
  dot = jax.jit(lambda x, y: x @ y)
  dot(a, a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = dot(a, a)
  out.block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - start)
