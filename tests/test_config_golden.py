"""Every method config builds what it was recorded building: parameter count and tree, visual
tokens, row length and, at the CPU sizes, the first step's loss on a fixed batch
(tests/config_golden.py says how each is measured). The ten wave-1 methods' numbers were measured
on the code before the configs were split per method (commit 115d518), so the split changed
none of them; a config added since records its own with its commit, and so does an intended
change of a config's behaviour (xcomposer2_4khd's select_layer −1, the authors')."""
import json
import pathlib
import subprocess
import sys

import pytest

from mmjax import config_args
from tests import config_golden

GOLDEN = json.loads(config_golden.GOLDEN.read_text())
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", config_golden.SIZES)
@pytest.mark.parametrize("method", config_golden.METHODS)
def test_config_builds_the_recorded_model(method, size):
  got = config_golden.measure(method, size)
  want = GOLDEN[f"{method}:{size}"]
  assert set(got) == set(want)
  assert {k: v for k, v in got.items() if k != "loss"} == {
      k: v for k, v in want.items() if k != "loss"}
  if "loss" in want:
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_default_is_llava15():
  for size in config_golden.SIZES:
    default, llava15 = (config_args.get_config(ROOT / "configs" / f"{m}.py", f"size={size}")
                        for m in ("default", "llava15"))
    assert default.to_json() == llava15.to_json()


def test_every_config_file_is_pinned():
  """A new config records its numbers (`python -m tests.config_golden`) with its commit."""
  assert {k.split(":")[0] for k in GOLDEN} == set(config_golden.METHODS)
  assert len(GOLDEN) == len(config_golden.METHODS) * len(config_golden.SIZES)


def test_parsing_a_config_imports_no_training_or_data_code():
  """A config is a description: reading one (e.g. to list or diff experiments) must not pull in
  the data pipeline (grain, TFDS) or the trainer."""
  code = ("import sys; from mmjax import config_args; "
          "[config_args.get_config(f'configs/{m}.py', 'size=tiny') for m in sys.argv[1:]]; "
          "bad = sorted(m for m in sys.modules if m.startswith(('mmjax.training', 'mmjax.data', "
          "'grain', 'tensorflow_datasets', 'mmjax.models.towers', 'mmjax.models.connectors', "
          "'mmjax.models.decoders'))); "
          "print(bad); sys.exit(1 if bad else 0)")
  run = subprocess.run([sys.executable, "-c", code, *config_golden.METHODS], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stdout + run.stderr


def test_small_size_asks_every_question_kind_in_one_row():
  from mmjax.data.datasets import questions
  common = __import__("mmjax.config_args", fromlist=["x"]).load_module(
      ROOT / "configs" / "common.py")
  assert common.SIZES["small"]["questions"] == len(questions.ALL_KINDS)


def test_every_tower_has_a_method_config():
  from mmjax.models import towers
  from tests import method_configs
  assert set(method_configs.FILES) == set(towers.TOWERS)
  for tower in towers.TOWERS:
    assert method_configs.get(tower, "size=tiny").model.tower.name == tower
