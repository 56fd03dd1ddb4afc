"""Shared test setup: 8 simulated CPU devices (set before jax is imported) for sharding tests,
unoptimised CPU code generation, one compilation cache for the session, and no skipped
tests."""
import os
import shutil
import tempfile

from mmjax import xla_flags  # Imports no jax.

# LLVM's optimisation of the compiled CPU code (level 0 here) is most of the compile time of the
# suite's tiny programs and does not change what is computed (HLO passes and floating-point
# semantics are the same): three of the slowest tests took 154 s of CPU time at the default
# level, 74 s at level 0. Inherited by the train.py processes tests start.
# XLA:CPU's MLIR fusion emitters take most of the rest: with the older emitters
# (--xla_cpu_use_fusion_emitters=false) the two-encoder tower's sharding test compiles in half
# the time (49 s → 24 s) and a train step's backend compile drops from 11 s to 7 s; the programs
# compute the same operations, and every parity tolerance holds with either emitter.
# And the flags train.py and eval.py set (mmjax.xla_flags), so that a test's run in this process
# computes what the same run in a train.py process does (and shares its compiled programs).
os.environ["XLA_FLAGS"] = xla_flags.with_defaults(
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")
# XLA on a CPU spends most of the train tests' time compiling, and many tests (and the train.py
# processes they start) compile the same tiny programs: JAX's persistent cache, keyed by the
# program, serves the repeats. One fresh directory per session, made by the process that starts
# it and inherited by the rest (pytest-xdist's workers, train.py); a cache hit still counts as a
# compilation in jax.monitoring, so the no-recompilation tests stay exact.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# Shape annotations (jaxtyping) are checked at test time, as the gemma library does: every
# function of mmjax imported from here on checks its array arguments and result against their
# annotations, and the axis letters of one call must agree (mmjax.shapes; tests/shape_check.py).
import jaxtyping  # noqa: E402

from tests import shape_check  # noqa: E402,F401  (imported for the hook's "tests.shape_check")

jaxtyping.install_import_hook("mmjax", "tests.shape_check.check")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


_skipped: list[str] = []


def pytest_runtest_logreport(report):
  if report.skipped:
    _skipped.append(report.nodeid)


def pytest_collectreport(report):
  """A module that skips itself (`pytest.importorskip`, `pytest.skip(allow_module_level=True)`)
  is reported here, not as skipped tests; pytest-xdist forwards these reports to the controller."""
  if report.skipped:
    _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
  """A skipped test or module is not a pass: parity and fidelity tests must run everywhere, CI
  included (tests/test_skip_guard.py)."""
  if _skipped and exitstatus == 0:
    print(f"\n{len(_skipped)} skipped tests or modules count as failures: {_skipped}")
    session.exitstatus = 1
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)


@pytest.fixture
def unchecked_shapes():
  """Turns the annotation checks off for a test of a function's own error on input its
  annotations already refuse (the error a user without the checks gets)."""
  jaxtyping.config.update("jaxtyping_disable", True)
  yield
  jaxtyping.config.update("jaxtyping_disable", False)
