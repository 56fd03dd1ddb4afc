"""The XLA flags the entry points set before JAX starts."""
import os
import subprocess
import sys

import pytest

from mmjax import xla_flags


def test_defaults_are_appended_and_a_users_own_value_is_kept():
  flag = "--xla_cpu_experimental_ynn_fusion_type"
  assert xla_flags.with_defaults("") == f"{flag}=dot"
  assert (xla_flags.with_defaults(" --xla_force_host_platform_device_count=8 ") ==
          f"--xla_force_host_platform_device_count=8 {flag}=dot")
  assert xla_flags.with_defaults(f"{flag}=individual_dot") == f"{flag}=individual_dot"


def test_applying_after_jax_is_imported_is_refused(monkeypatch):
  import jax  # noqa: F401  (already imported by the other tests; made sure of here)
  xla_flags.apply()  # The flags are there already (tests/conftest.py): nothing to do.
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(RuntimeError, match="must run before jax is imported"):
    xla_flags.apply()


def test_the_pinned_jaxlib_accepts_the_flags_and_computes_the_same():
  """An XLA that does not know a flag aborts at start: the defaults must belong to the pinned
  jaxlib. A program's result with them equals its result without (a dot, an elementwise
  op and a reduction), to rounding."""
  program = ("import jax, jax.numpy as jnp; x = jnp.arange(12.).reshape(3, 4); "
             "print(float(jax.jit(lambda a: jnp.sum(jax.nn.silu(a @ a.T)))(x)))")
  outputs = []
  for apply in (True, False):
    code = ("from mmjax import xla_flags; xla_flags.apply(); " if apply else "") + program
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    outputs.append(float(done.stdout.split()[-1]))
  assert outputs[0] == pytest.approx(outputs[1], rel=1e-6)  # Fusions may round differently.
