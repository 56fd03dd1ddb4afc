"""The error contract on a corpus of bad inputs to every command: train.py, eval.py,
`python -m mmjax.convert`, `python -m mmjax.data.ingest`, `python -m mmjax.plan` and the
embedded dataset's builder (`python -m mmjax.data.datasets.finedetail`).

Each case runs the command's `main` in this process (the process boundary is tested by the few
subprocess cases at the end) and asserts: a non-zero exit code, no traceback, the thing at fault
named on the last line of stderr, no hang (an alarm fails a case that blocks), and no file
created or changed anywhere under the inputs' folder or the dataset's.
"""
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from absl import logging as absl_logging
from safetensors import numpy as st_numpy

from mmjax import cli
from mmjax import config_args
from mmjax import files
from mmjax.convert import __main__ as convert_main
from mmjax.data import ingest
from mmjax.data.datasets import finedetail
from mmjax import plan
from mmjax.training import validate

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.py"
CONFIG = f"{DEFAULT}:size=tiny,steps=2"


def _module(name: str):
  spec = importlib.util.spec_from_file_location(f"mmjax_command_{name}", ROOT / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TRAIN, EVAL = _module("train"), _module("eval")


class World:
  """The inputs the cases point at, made once: a run folder (its config.json and an empty
  checkpoint folder: every case fails before a checkpoint is read), FIFOs, files where folders
  belong, and Hugging Face folders broken in one way each."""

  def __init__(self, root: pathlib.Path, data_dir: str):
    self.root, self.data_dir = root, data_dir
    self.base = ["--config", CONFIG, f"--config.data.data_dir={data_dir}",
                 "--config.train.batch_size=8"]  # 8 rows: the 8 simulated devices split them.
    c = config_args.get_config(DEFAULT, "size=tiny,steps=2")
    c.data.data_dir, c.train.batch_size = data_dir, 8
    self.run = self._run("run", c)
    self.evaluated = self._run("evaluated", c)
    other = c.copy_and_resolve_references()
    other.eval.max_new_tokens = 8
    (self.evaluated / "eval").mkdir()
    (self.evaluated / "eval" / "2.json").write_text(json.dumps(
        {"step": 2, "config": validate.as_json(other)}))
    # The same config, but a run trained with another vocabulary under the tokenizer's name.
    self.other_vocabulary = self._run("other_vocabulary", c, vocabulary="sha256:0123456789abcdef")
    self.bare = self._run("bare", c, config=False)
    self.corrupt = self._run("corrupt", c, config=False)
    (self.corrupt / "config.json").write_text('{"model": ')
    self.fifo_run = self._run("fifo_run", c, config=False)
    os.mkfifo(self.fifo_run / "config.json")
    (root / "no_checkpoints").mkdir()
    self.file = root / "a_file"
    self.file.write_text("not a folder\n")
    self.fifo = root / "fifo.json"
    os.mkfifo(self.fifo)
    self.params_fifo = root / "params_fifo.safetensors"
    os.mkfifo(self.params_fifo)
    (root / "images").mkdir()
    (root / "empty.json").write_text("[]")
    (root / "one.json").write_text('[{"id": "a"}]')
    self.hf = root / "hf"
    self._hf(self.hf, {"architectures": ["LlamaForCausalLM"]})
    self._hf(root / "hf_nope", {"architectures": ["NopeModel"]})
    self._hf(root / "hf_two", {"architectures": ["A", "B"]})
    self._hf(root / "hf_list", [1, 2])
    (root / "hf_noconfig").mkdir()
    st_numpy.save_file({"w": np.zeros(2, np.float32)}, str(root / "hf_noconfig" / "m.safetensors"))
    (root / "hf_noweights").mkdir()
    (root / "hf_noweights" / "config.json").write_text("{}")
    (root / "hf_fifo_config").mkdir()
    os.mkfifo(root / "hf_fifo_config" / "config.json")
    self._hf(root / "hf_fifo_weights", {"architectures": ["LlamaForCausalLM"]}, weights=False)
    os.mkfifo(root / "hf_fifo_weights" / "model.safetensors")
    self._hf(root / "hf_garbage", {"architectures": ["LlamaForCausalLM"]}, weights=False)
    (root / "hf_garbage" / "model.safetensors").write_bytes(b"\xff" * 64)
    (root / "not_mmjax").mkdir()
    (root / "not_mmjax" / "config.json").write_text('{"hidden_size": 8}')
    (root / "full_out").mkdir()
    (root / "full_out" / "keep.txt").write_text("mine\n")
    # A dataset whose training records were cut in half after it was generated.
    self.truncated = root / "tfds_truncated"
    shutil.copytree(data_dir, self.truncated)
    shard = next(self.truncated.rglob("fine_detail-train.array_record-*"))
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    self.missing = root / "tfds_missing"  # A partial copy: one split's records absent.
    shutil.copytree(data_dir, self.missing)
    next(self.missing.rglob("fine_detail-validation.array_record-*")).unlink()

  def _run(self, name: str, c, config: bool = True, vocabulary: str = "byte") -> pathlib.Path:
    run = self.root / name
    (run / "checkpoints" / "2").mkdir(parents=True)
    if config:
      (run / "config.json").write_text(json.dumps(
          {**validate.as_json(c), "derived": {"tokenizer": vocabulary, "vocab_size": 261}}))
    return run

  @staticmethod
  def _hf(directory: pathlib.Path, config, weights: bool = True) -> None:
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    if weights:
      st_numpy.save_file({"w": np.zeros(2, np.float32)}, str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  finedetail.prepare("tiny", data_dir)
  return World(tmp_path_factory.mktemp("inputs"), data_dir)


def _train(w, *extra):
  return TRAIN.main([*w.base, f"--workdir={w.root / 'new_run'}", *extra])


def _eval(w, workdir, *extra):
  return EVAL.main([*w.base, f"--workdir={workdir}", *extra])


def _convert(w, *args):
  return convert_main.main([str(a) for a in args])


def _ingest(w, json_path, images=None, out=None, *extra):
  return ingest.main(["--json", str(json_path), "--images", str(images or w.root / "images"),
                      "--out", str(out or w.root / "ingested"), *extra])


# (id, call(world) → exit code, what stderr's last line must name).
CASES = [
    # train.py: flags.
    ("train-no-flags", lambda w: TRAIN.main([]), "--config — required"),
    ("train-no-workdir", lambda w: TRAIN.main(w.base), "--workdir — required"),
    ("train-unknown-flag", lambda w: _train(w, "--bogus=1"), "--bogus — unknown flag; valid:"),
    ("train-positional", lambda w: _train(w, "extra"), "'extra' — unexpected argument"),
    ("train-bad-verbosity", lambda w: _train(w, "--verbosity=loud"),
     "--verbosity=loud — not a level; valid: debug, info"),
    ("train-config-missing", lambda w: TRAIN.main(["--config", "configs/nope.py",
                                                   "--workdir", str(w.root / "new_run")]),
     "--config configs/nope.py — No config file"),
    ("train-config-size", lambda w: TRAIN.main([f"--config={DEFAULT}:size=huge",
                                                f"--workdir={w.root / 'new_run'}"]),
     "Unknown size 'huge'; valid: ['7b', 'base', 'small', 'tiny']"),
    ("train-config-argument", lambda w: TRAIN.main([f"--config={DEFAULT}:sise=tiny",
                                                    f"--workdir={w.root / 'new_run'}"]),
     "Unknown config argument 'sise'; valid: ['patch', 'pretrain', 'res', 'size', 'steps']"),
    ("train-config-argument-type", lambda w: TRAIN.main([f"--config={DEFAULT}:steps=many",
                                                         f"--workdir={w.root / 'new_run'}"]),
     "steps='many' is not a int"),
    ("train-misspelt-field", lambda w: _train(w, "--config.train.lrr=1"),
     "--config.train.lrr — train has no field 'lrr'; valid: adam_eps,"),
    ("train-misspelt-section", lambda w: _train(w, "--config.trian.lr=1"),
     "--config.trian.lr — the config has no field 'trian'; valid: data, eval, evals,"),
    ("train-field-type", lambda w: _train(w, "--config.train.lr=fast"),
     "--config.train.lr=fast — could not convert string to float"),
    # train.py: values and rules between them.
    ("train-lr-negative", lambda w: _train(w, "--config.train.lr=-1e-3"), "train.lr=-0.001"),
    ("train-lr-nan", lambda w: _train(w, "--config.train.lr=nan"), "train.lr=nan"),
    ("train-lr-inf", lambda w: _train(w, "--config.train.lr=inf"), "train.lr=inf"),
    ("train-align-lr", lambda w: _train(w, "--config.train.align_lr=0"), "train.align_lr=0"),
    ("train-steps-negative", lambda w: _train(w, "--config.train.steps=-1"), "train.steps=-1"),
    ("train-nothing-to-train", lambda w: _train(w, "--config.train.steps=0"),
     "train.steps=0 — nothing would train"),
    ("train-batch-zero", lambda w: _train(w, "--config.train.batch_size=0"),
     "train.batch_size=0"),
    ("train-accumulation", lambda w: _train(w, "--config.train.grad_accum_steps=3"),
     "does not split into train.grad_accum_steps=3"),
    ("train-batch-mesh", lambda w: _train(w, "--config.train.batch_size=12"),
     "train.batch_size=12 — each micro-batch"),
    ("train-micro-batch-mesh", lambda w: _train(w, "--config.train.grad_accum_steps=2"),
     "train.batch_size=8 — each micro-batch (train.batch_size / train.grad_accum_steps) of 4"),
    ("train-mesh", lambda w: _train(w, "--config.mesh.data=3"), "mesh (data, fsdp, tensor)"),
    ("train-mesh-zero", lambda w: _train(w, "--config.mesh.tensor=0"),
     "mesh (data, fsdp, tensor) = (-1, 1, 0)"),
    ("train-checkpoint-every", lambda w: _train(w, "--config.train.checkpoint_every=0"),
     "train.checkpoint_every=0"),
    ("train-log-every", lambda w: _train(w, "--config.train.log_every=0"), "train.log_every=0"),
    ("train-keep", lambda w: _train(w, "--config.train.keep_checkpoints=0"),
     "train.keep_checkpoints=0"),
    ("train-warmup", lambda w: _train(w, "--config.train.warmup_fraction=2"),
     "train.warmup_fraction=2.0"),
    ("train-align-fraction", lambda w: _train(w, "--config.train.align_fraction=1"),
     "train.align_fraction=1.0"),
    ("train-weight-decay", lambda w: _train(w, "--config.train.weight_decay=-1"),
     "train.weight_decay=-1.0"),
    ("train-grad-clip", lambda w: _train(w, "--config.train.grad_clip=-1"),
     "train.grad_clip=-1.0"),
    ("train-adam-eps", lambda w: _train(w, "--config.train.adam_eps=0"), "train.adam_eps=0.0"),
    ("train-dtype", lambda w: _train(w, "--config.model.dtype=float8"),
     "model.dtype='float8'"),
    ("train-until", lambda w: _train(w, "--config.pretrain.until=2"), "pretrain.until=2.0"),
    ("train-max-len", lambda w: _train(w, "--config.data.max_len=16"),
     "data.max_len=16 — rows of 16 tokens leave no room for text beside the model's 16"),
    ("train-rows-dropped", lambda w: _train(w, "--config.data.max_len=20"),
     "data.max_len=20 — 8 of the first 8 rows of the 'vqa' task are longer"),
    ("train-text-len", lambda w: _train(w, "--config.data.text_len=0"), "data.text_len=0"),
    ("train-tower", lambda w: _train(w, "--config.model.tower.name=resnet"),
     "Unknown tower 'resnet'; valid:"),
    ("train-connector", lambda w: _train(w, "--config.model.connector.name=qformer"),
     "Unknown connector 'qformer'; valid:"),
    ("train-decoder", lambda w: _train(w, "--config.model.llm.name=gpt"), "'gpt'"),
    ("train-kinds", lambda w: _train(w, "--config.data.kinds=pattern_shap"),
     "data.kinds has unknown question kinds ['pattern_shap']"),
    ("train-dataset", lambda w: _train(w, "--config.data.dataset=nosuch/tiny"),
     "Unknown dataset 'nosuch/tiny'"),
    ("train-ingested-missing", lambda w: _train(w, f"--config.data.dataset=llava_json:"
                                                f"{w.root / 'nowhere'}"),
     "nowhere — "),
    ("train-tokenizer-file", lambda w: _train(w, f"--config.data.tokenizer={w.root}/t.json"),
     "t.json"),
    ("train-tokenizer-fifo", lambda w: _train(w, f"--config.data.tokenizer={w.fifo}"),
     "fifo.json — is a FIFO"),
    ("train-bpe-size", lambda w: _train(w, "--config.data.tokenizer=bpe:many"),
     "'bpe:N' takes a vocabulary size"),
    ("train-init-missing", lambda w: _train(w, f"--config.train.init_params=tower="
                                            f"{w.root / 'nowhere.safetensors'}"),
     "nowhere.safetensors — no such file"),
    ("train-init-fifo", lambda w: _train(w, f"--config.train.init_params=tower={w.params_fifo}"),
     "params_fifo.safetensors — is a FIFO"),
    ("train-init-not-safetensors", lambda w: _train(w, f"--config.train.init_params=tower="
                                                    f"{w.root / 'one.json'}"),
     "one.json — not readable safetensors"),
    ("train-init-syntax", lambda w: _train(w, "--config.train.init_params=tower"),
     "train.init_params entry 'tower' is not SUBTREE=PATH"),
    ("train-evaluator", lambda w: _train(w, "--config.evals.vqa.type=bleu"),
     "evals.vqa.type='bleu' is not an evaluator"),
    ("train-evaluator-every", lambda w: _train(w, "--config.evals.vqa.every=-1"),
     "evals.vqa.every=-1"),
    ("train-workdir-file", lambda w: TRAIN.main([*w.base, f"--workdir={w.file}"]),
     "a_file — exists and is not a folder"),
    ("train-workdir-under-file", lambda w: TRAIN.main([*w.base, f"--workdir={w.file}/run"]),
     "a_file is not a folder"),
    ("train-resume-other-model", lambda w: TRAIN.main([*w.base, f"--workdir={w.run}",
                                                       "--config.model.llm.width=128"]),
     "differs from the run's config.json in 1 field: model.llm.width 64 → 128"),
    ("train-resume-other-format", lambda w: TRAIN.main([*w.base, f"--workdir={w.run}",
                                                        "--config.data.template=chatml"]),
     "data.template 'vicuna_short' → 'chatml'"),
    ("train-resume-other-vocabulary", lambda w: TRAIN.main([*w.base,
                                                            f"--workdir={w.other_vocabulary}"]),
     "data.tokenizer='byte' for resuming"),
    ("train-distributed", lambda w: _train(w, "--coordinator_address=localhost:1234"),
     "--coordinator_address — needs --num_processes and --process_id"),
    # eval.py.
    ("eval-no-run", lambda w: _eval(w, w.root / "no_run"), "no_run — no such run folder"),
    ("eval-file", lambda w: _eval(w, w.file), "a_file — not a folder"),
    ("eval-no-checkpoints", lambda w: _eval(w, w.root / "no_checkpoints"),
     "no_checkpoints — holds no checkpoints/ folder"),
    ("eval-step", lambda w: _eval(w, w.run, "--step=99"),
     "--step=99 — no checkpoint of that step; saved: [2]"),
    ("eval-step-negative", lambda w: _eval(w, w.run, "--step=-1"), "--step=-1"),
    ("eval-other-model", lambda w: _eval(w, w.run, "--config.model.llm.rope_theta=500000",
                                         "--config.model.tower.select_layer=-1"),
     "in 2 fields: model.llm.rope_theta 10000.0 → 500000.0, model.tower.select_layer -2 → -1"),
    ("eval-other-eval", lambda w: _eval(w, w.run, "--config.eval.max_new_tokens=8"),
     "eval.max_new_tokens 24 → 8; pass the run's config (--allow_eval_changes"),
    ("eval-overwrite", lambda w: _eval(w, w.evaluated, "--allow_eval_changes"),
     "2.json — an earlier result that was evaluated with another config: "
     "eval.max_new_tokens 8 → 24"),
    ("eval-other-vocabulary", lambda w: _eval(w, w.other_vocabulary),
     "other_vocabulary — its vocabulary differs from the one the run trained with"),
    ("eval-no-config", lambda w: _eval(w, w.bare), "bare — has no config.json"),
    ("eval-corrupt-config", lambda w: _eval(w, w.corrupt), "config.json — not valid JSON"),
    ("eval-fifo-config", lambda w: _eval(w, w.fifo_run), "config.json — is a FIFO"),
    ("eval-no-evaluators", lambda w: _eval(w, w.run, "--config.evals.vqa.type=bleu"),
     "evals.vqa.type='bleu' is not an evaluator"),
    # python -m mmjax.convert.
    ("convert-out-is-source", lambda w: _convert(w, "--hf", w.hf, "--out", w.hf),
     "is --hf " ),
    ("convert-out-inside-source", lambda w: _convert(w, "--hf", w.hf, "--out", w.hf / "sub"),
     "or inside it: the source would be overwritten"),
    ("convert-out-not-empty", lambda w: _convert(w, "--hf", w.hf, "--out", w.root / "full_out"),
     "full_out — is not empty; choose an empty folder, or pass --overwrite"),
    ("convert-out-file", lambda w: _convert(w, "--hf", w.hf, "--out", w.file),
     "a_file — exists and is not a folder"),
    ("convert-no-source", lambda w: _convert(w, "--hf", w.root / "nowhere", "--out",
                                             w.root / "out"), "nowhere — no such folder"),
    ("convert-no-config", lambda w: _convert(w, "--hf", w.root / "hf_noconfig", "--out",
                                             w.root / "out"), "config.json — no such file"),
    ("convert-no-weights", lambda w: _convert(w, "--hf", w.root / "hf_noweights", "--out",
                                              w.root / "out"),
     "holds no *.safetensors file; pickled .bin checkpoints are not read"),
    ("convert-fifo-config", lambda w: _convert(w, "--hf", w.root / "hf_fifo_config", "--out",
                                               w.root / "out"), "config.json — is a FIFO"),
    ("convert-fifo-weights", lambda w: _convert(w, "--hf", w.root / "hf_fifo_weights", "--out",
                                                w.root / "out"),
     "model.safetensors — is a FIFO"),
    ("convert-garbage-weights", lambda w: _convert(w, "--hf", w.root / "hf_garbage", "--out",
                                                   w.root / "out"),
     "model.safetensors — not readable safetensors"),
    ("convert-architecture", lambda w: _convert(w, "--hf", w.root / "hf_nope", "--out",
                                                w.root / "out"),
     "Architecture 'NopeModel' has no converter; supported:"),
    ("convert-two-architectures", lambda w: _convert(w, "--hf", w.root / "hf_two", "--out",
                                                     w.root / "out"),
     "must name exactly one architecture"),
    ("convert-config-list", lambda w: _convert(w, "--hf", w.root / "hf_list", "--out",
                                               w.root / "out"), "not a JSON object"),
    ("convert-missing-fields", lambda w: _convert(w, "--hf", w.hf, "--out", w.root / "out"),
     "--hf "),
    ("convert-to-hf-alone", lambda w: _convert(w, "--to_hf", "--out", w.root / "out"),
     "--to_hf takes --mmjax DIR"),
    ("convert-not-mmjax", lambda w: _convert(w, "--to_hf", "--mmjax", w.root / "not_mmjax",
                                             "--out", w.root / "out"),
     "not an mmjax checkpoint's config"),
    ("convert-dtype", lambda w: _convert(w, "--hf", w.hf, "--out", w.root / "out",
                                         "--param_dtype", "int8"), "--param_dtype"),
    # python -m mmjax.data.ingest.
    ("ingest-fifo", lambda w: _ingest(w, w.fifo), "fifo.json — is a FIFO"),
    ("ingest-device", lambda w: _ingest(w, "/dev/zero"), "/dev/zero — is a character device"),
    ("ingest-folder", lambda w: _ingest(w, w.root / "images"), "images — is a folder"),
    ("ingest-images-file", lambda w: _ingest(w, w.root / "one.json", w.file),
     "a_file — not a folder; give --images the folder"),
    ("ingest-out-file", lambda w: _ingest(w, w.root / "one.json", None, w.file),
     "a_file — exists and is not a folder"),
    ("ingest-max-pixels", lambda w: _ingest(w, w.root / "one.json", None, None,
                                            "--max_pixels", "0"), "--max_pixels"),
    ("ingest-val-fraction", lambda w: _ingest(w, w.root / "one.json", None, None,
                                              "--val_fraction", "1.5"), "--val_fraction"),
    ("ingest-no-records", lambda w: _ingest(w, w.root / "empty.json"),
     "empty.json — holds no records"),
    ("ingest-not-a-list", lambda w: _ingest(w, w.root / "hf" / "config.json"),
     "config.json — holds a dict; expected a list of records"),
    # python -m mmjax.plan.
    ("plan-batch", lambda w: plan.main(["--config", CONFIG, "--batch", "0"]),
     "argument --batch: 0 is below 1"),
    ("plan-text-len", lambda w: plan.main(["--config", CONFIG, "--text_len", "x"]),
     "argument --text_len: 'x' is not an integer"),
    ("plan-mesh-arity", lambda w: plan.main(["--config", CONFIG, "--mesh", "1,2"]),
     "--mesh 1,2 — needs three sizes"),
    ("plan-mesh-text", lambda w: plan.main(["--config", CONFIG, "--mesh", "a,b,c"]),
     "'a,b,c' is not three comma-separated integers"),
    ("plan-mesh-devices", lambda w: plan.main(["--config", CONFIG, "--mesh", "3,1,1"]),
     "set --mesh for 8 devices"),
    ("plan-batch-mesh", lambda w: plan.main(["--config", CONFIG, "--batch", "3"]),
     "--batch 3 — does not split over the mesh's 8 data-parallel devices"),
    ("plan-config", lambda w: plan.main(["--config", f"{DEFAULT}:size=huge"]),
     "Unknown size 'huge'"),
    # The embedded dataset's builder.
    ("dataset-config", lambda w: finedetail.main(["--config", "huge"]), "--config"),
    ("dataset-dir-file", lambda w: finedetail.main(["--config", "tiny", "--data_dir",
                                                    str(w.file)]),
     "--data_dir " ),
    ("dataset-truncated", lambda w: finedetail.main(["--config", "tiny", "--data_dir",
                                                     str(w.truncated)]),
     "fine_detail-train.array_record-00000-of-00001 — damaged: "),
    ("dataset-missing", lambda w: finedetail.main(["--config", "tiny", "--data_dir",
                                                   str(w.missing)]),
     "fine_detail-validation.array_record-00000-of-00001 — no such file"),
]


def _snapshot(*roots) -> dict[str, tuple]:
  """Every path under `roots` with its kind, size and modification time."""
  out = {}
  for root in roots:
    for directory, dirs, names in os.walk(root):
      for name in dirs + names:
        path = os.path.join(directory, name)
        st = os.lstat(path)
        out[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
  return out


def _timeout(signum, frame):
  raise TimeoutError("the command blocked (a FIFO read?)")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(world, case, capfd):
  _, call, needle = case
  before = _snapshot(world.root, world.data_dir)
  previous = signal.signal(signal.SIGALRM, _timeout)
  signal.alarm(60)
  try:
    code = call(world)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  out, err = capfd.readouterr()
  assert code not in (0, None), (out, err)
  assert "Traceback" not in out + err, err
  last = err.strip().splitlines()[-1] if err.strip() else ""
  assert "error:" in last and needle in last, err
  assert _snapshot(world.root, world.data_dir) == before


def test_the_corpus_covers_every_command_and_is_large():
  commands = {case[0].split("-")[0] for case in CASES}
  assert commands == {"train", "eval", "convert", "ingest", "plan", "dataset"}
  assert len(CASES) >= 60 and len({case[0] for case in CASES}) == len(CASES)


def test_json_is_read_up_to_its_limit(world, tmp_path, monkeypatch, capfd):
  big = tmp_path / "big.json"
  big.write_text(json.dumps([{"id": str(i)} for i in range(100)]))
  monkeypatch.setattr(files, "MAX_JSON_BYTES", 1000)
  assert _ingest(world, big, None, tmp_path / "out") == cli.EXIT_ERROR
  assert f"big.json — {big.stat().st_size:,} bytes, over the limit of 1,000" in \
      capfd.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_traceback_is_shown_when_asked(world, capfd, monkeypatch):
  try:
    assert _train(world, "--config.train.lr=-1", "--verbosity=debug") == cli.EXIT_ERROR
  finally:
    absl_logging.set_verbosity("info")  # The command set the process's level: put it back.
  err = capfd.readouterr().err
  assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: train.lr=-1.0")
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  assert _convert(world, "--hf", world.hf, "--out", world.hf) == cli.EXIT_ERROR
  assert "Traceback" in capfd.readouterr().err


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
  def broken(argv):
    raise ZeroDivisionError("a bug")
  with pytest.raises(ZeroDivisionError):
    cli.run(broken, [])


# One command of each kind: absl flags (train.py; eval.py shares its path) and argparse.
@pytest.mark.parametrize("command", [
    [sys.executable, "train.py", f"--config={CONFIG}", "--workdir=/dev/null/run"],
    [sys.executable, "-m", "mmjax.data.ingest", "--json", "/dev/zero", "--images", ".",
     "--out", "/nonexistent/out"],
])
def test_commands_as_processes_exit_2_with_one_line(command):
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == cli.EXIT_ERROR, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert "Traceback" not in result.stderr and lines[-1].startswith("error: "), result.stderr
  assert not pathlib.Path("/nonexistent").exists()
