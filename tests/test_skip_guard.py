"""The suite's skip guard (conftest.py): a skipped test, a module that skips itself and a module
that fails to import each fail the run, with and without pytest-xdist's workers."""
import pathlib
import shutil
import subprocess
import sys

import pytest

CONFTEST = pathlib.Path(__file__).with_name("conftest.py")
MODULES = {
    "skipped_test": "import pytest\n\ndef test_skipped():\n  pytest.skip('no reason')\n",
    "module_skip": "import pytest\npytest.skip('whole module', allow_module_level=True)\n\n"
                   "def test_never_runs():\n  pass\n",
    "importorskip": "import pytest\npytest.importorskip('a_package_that_is_not_installed')\n\n"
                    "def test_never_runs():\n  pass\n",
    "import_error": "import a_package_that_is_not_installed\n\ndef test_never_runs():\n  pass\n",
}


def _run(tmp_path, module: str | None, workers: int) -> subprocess.CompletedProcess:
  shutil.copy(CONFTEST, tmp_path / "conftest.py")
  (tmp_path / "tests").mkdir()  # The conftest's shape checker, which it imports.
  for name in ("__init__.py", "shape_check.py"):
    shutil.copy(CONFTEST.with_name(name), tmp_path / "tests" / name)
  (tmp_path / "test_passes.py").write_text("def test_passes():\n  assert True\n")
  if module is not None:
    (tmp_path / f"test_{module}.py").write_text(MODULES[module])
  args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
  if workers:
    args += ["-n", str(workers)]
  return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_clean_run_passes(tmp_path, workers):
  result = _run(tmp_path, None, workers)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_skip_or_a_broken_module_fails_the_run(tmp_path, module, workers):
  result = _run(tmp_path, module, workers)
  assert result.returncode != 0, result.stdout + result.stderr
  if module != "import_error":
    assert "count as failures" in result.stdout and f"test_{module}.py" in result.stdout
