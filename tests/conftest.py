"""Shared test setup: 8 simulated CPU devices (set before jax is imported) for sharding tests,
and no skipped tests."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


_skipped: list[str] = []


def pytest_runtest_logreport(report):
  if report.skipped:
    _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
  """A skipped test is not a pass: parity and fidelity tests must run everywhere, CI included."""
  if _skipped and exitstatus == 0:
    print(f"\n{len(_skipped)} skipped tests count as failures: {_skipped}")
    session.exitstatus = 1


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(0)
