"""train.py / eval.py: sharded equality, freezing, NaN guard, configs, resume, preemption,
multi-process training and evaluation end to end."""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import config_args
from mmjax import generate
from mmjax import sampling
from mmjax import evaluation
from mmjax import evaluators
from mmjax.evaluators import loss as loss_evaluator
from mmjax.evaluators import vqa
from mmjax import sharding
from mmjax.data import pipeline
from mmjax.models import mllm
from mmjax.training import build
from mmjax.training import checkpoint as checkpoint_lib
from mmjax.training import loop
from mmjax.training import optim
from mmjax.training import state as state_lib
from mmjax.training import step as step_lib
from tests import config_golden
from tests import method_configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.py"


# Tiny, with every sharded dimension divisible by 8 so any split of 8 devices works.
OVERRIDES = {"model.tower.vit.num_heads": 8, "model.llm.num_heads": 8,
             "model.llm.num_kv_heads": 8, "model.llm.vocab_size": 264, "train.batch_size": 8, "train.log_every": 1,
             "data.eval_examples": 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  build.finedetail.prepare("tiny", path)
  return path


def tiny(data_dir, steps=4, **overrides):
  c = config_args.get_config(DEFAULT, f"size=tiny,steps={steps}")
  for key, value in {**OVERRIDES, "data.data_dir": data_dir, **overrides}.items():
    *path, name = key.split(".")
    node = c
    for part in path:
      node = node[part]
    setattr(node, name, value)
  return c


def _flags(c, workdir, steps):
  return [sys.executable, str(ROOT / "train.py"), f"--config={ROOT}/configs/default.py:"
          f"size=tiny,steps={steps}", f"--workdir={workdir}"] + [
              f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.data_dir": c.data.data_dir,
                                                 "train.checkpoint_every": 2}.items()]


def _losses(workdir) -> dict[int, float]:
  """Loss by step; a step logged twice (before a crash and after resuming) keeps its last row."""
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]
  return {r["step"]: r["loss"] for r in rows}


def _stage_pieces(c, stage, mesh, eps=1e-8):
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  model = mllm.MLLM(config)
  source = build.data_source(c, "train")
  fmt = build.formatter(c, stage.task, config, tok)
  host = next(iter(pipeline.make_loader(source, fmt, global_batch_size=8, seed=0)))
  spec = step_lib.model_batch(host)
  params = state_lib.abstract_params(model, spec)
  tx = optim.optimizer(params, lr=optim.schedule(stage.lr, 0, 10), weight_decay=0.0,
                       grad_clip=1.0, trainable=stage.trainable, eps=eps)
  return model, tx, state_lib.Factory(model, tx, spec, mesh), host


def _steps(c, stage, mesh, n=2, eps=1e-8):
  model, tx, factory, host = _stage_pieces(c, stage, mesh, eps)
  state = factory.create(jax.random.key(0))
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, model=model, tx=tx),
                 in_shardings=(factory.shardings, sharding.data_sharding(mesh)),
                 out_shardings=(factory.shardings, None))
  losses = []
  with jax.set_mesh(mesh), sharding.axis_rules():
    for _ in range(n):
      state, m = step(state, pipeline.to_global(step_lib.model_batch(host), mesh))
      losses.append(float(m["loss"]))
  return state, losses


def test_train_step_on_meshes_equals_one_device(data_dir):
  c = tiny(data_dir)
  stage = build.stages(c)[-1]
  # Adam turns a gradient that is zero in exact arithmetic (attention key biases: softmax ignores
  # them) into ±lr steps whose sign is float noise, which any change of summation order flips;
  # eps=1e-6 keeps such noise below the tolerance without changing any real update's scale.
  one = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  ref_state, ref_losses = _steps(c, stage, one, eps=1e-6)
  for shape in [(8, 1, 1), (2, 2, 2), (1, 1, 8)]:
    state, losses = _steps(c, stage, sharding.make_mesh(shape), eps=1e-6)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, err_msg=str(shape))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=str(shape))


def test_frozen_parameters_do_not_move_and_have_no_optimizer_state(data_dir):
  c = tiny(data_dir)
  stage = build.Stage("align", 0, 4, "caption", "^projector/", 1e-2)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  model, tx, factory, _ = _stage_pieces(c, stage, mesh)
  before = factory.create(jax.random.key(0))
  before_params = jax.tree.map(np.asarray, before.params)
  after, _ = _steps(c, stage, mesh, n=1)
  for name in ("tower", "llm"):
    for a, b in zip(jax.tree.leaves(after.params[name]), jax.tree.leaves(before_params[name])):
      np.testing.assert_array_equal(a, b)
  assert not np.allclose(after.params["projector"]["linear_0"]["kernel"],
                         before_params["projector"]["linear_0"]["kernel"])
  moments = state_lib.count(after.opt_state) - len(jax.tree.leaves(after.opt_state))
  assert moments <= 2 * state_lib.count(after.params["projector"])


def test_config_typos_fail_listing_valid_keys():
  c = config_args.get_config(DEFAULT, "size=tiny")
  with pytest.raises(AttributeError, match="Did you mean \"lr\""):
    c.train.lrr = 1.0
  with pytest.raises(ValueError,
                     match=r"valid: \['patch', 'pretrain', 'res', 'size', 'steps'\]"):
    config_args.get_config(DEFAULT, "sise=tiny")
  c.model.tower.name = "resnet"
  with pytest.raises(ValueError, match=r"Unknown tower 'resnet'; valid: \['eagle', 'internvl', "
                     r"'leo', 'llava_hr', 'mini_gemini', 'onevision', 'oryx', 'qwen2vl', 'vit', "
                     r"'xcomposer'\]"):
    build.model_config(c, 300)
  c = config_args.get_config(DEFAULT, "size=tiny")
  c.model.connector.name = "qformer"
  with pytest.raises(ValueError, match=r"Unknown connector 'qformer'; valid: \[.*'mlp'"):
    build.model_config(c, 300)
  with pytest.raises(ValueError, match=r"valid: \['7b', 'base', 'small', 'tiny'\]"):
    config_args.get_config(DEFAULT, "size=huge")
  with pytest.raises(FileNotFoundError, match="no_such.py"):
    config_args.get_config(ROOT / "configs" / "no_such.py")
  c = config_args.get_config(DEFAULT, "size=tiny")
  c.data.kinds = "pattern_colours, pattern_shap"
  with pytest.raises(ValueError, match=r"unknown question kinds \['pattern_shap'\]; valid: "
                     r"pattern_colours, pattern_count, pattern_shape"):
    build.question_kinds(c)


def test_eagle_and_leo_take_the_encoders_named():
  """One encoder alone makes a single-encoder tower (the ablation pre-trains the ConvNeXt so)."""
  for tower in ("eagle", "leo"):
    c = config_args.get_config(ROOT / "configs" / f"{tower}.py", "size=tiny")
    both = build.model_config(c, 300).tower.encoders
    assert [e.convnext is None for e in both] == [True, False]
    c.model.tower.encoders = "convnext"
    (alone,) = build.model_config(c, 300).tower.encoders
    assert alone == both[1]
    for bad in ("convnext,convnext", "vit,sam", ""):
      c.model.tower.encoders = bad
      with pytest.raises(ValueError, match=r"must name distinct encoders from \['convnext', "
                         r"'vit'\]"):
        build.model_config(c, 300)


def test_vit_stem_reaches_every_vit_and_native_towers_refuse_it():
  """`vit.stem` builds every ViT of the towers that have one (the hMLP at CPU sizes, CLIP's
  linear patch map at the papers' size); the packed native towers embed patches their own way
  and have no such field."""
  for tower in ("vit", "llava_hr", "internvl", "eagle"):
    c = method_configs.get(tower, "size=tiny")
    tower_config = build.model_config(c, 300).tower
    vits = [e.vit for e in tower_config.encoders if e.vit] if tower == "eagle" else [
        tower_config.vit]
    assert [v.stem for v in vits] == ["hmlp"], tower
  big = config_args.get_config(DEFAULT, "size=7b")
  assert build.model_config(big, 300).tower.vit.stem == "patch"
  for tower in ("qwen2vl", "oryx"):
    c = method_configs.get(tower, "size=tiny")
    build.model_config(c, 300)
    with pytest.raises(AttributeError, match="stem"):
      c.model.tower.vit.stem = "hmlp"


def test_non_finite_loss_stops_keeping_the_last_good_checkpoint(data_dir, tmp_path):
  # Warm-up from 0 makes step 1 harmless; then lr 1e30 blows the parameters up.
  c = tiny(data_dir, steps=6, **{"train.align_fraction": 0.0, "train.lr": 1e30,
                                 "train.warmup_fraction": 0.5, "train.checkpoint_every": 1,
                                 "train.grad_clip": 0.0})
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 1"):
    loop.train(c, tmp_path)
  checkpoints = checkpoint_lib.Checkpointer(tmp_path / "checkpoints")
  assert checkpoints.all_steps() == [1]


def test_small_replicated_arrays_are_saved_whole_and_restore_on_another_mesh(tmp_path):
  """Orbax would split every replicated array into one slice per device (an eager slice each);
  arrays under MIN_REPLICA_SLICE_BYTES are written whole, and restore equal, on another mesh."""
  mesh = sharding.make_mesh((8, 1, 1))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params = {f"w{i}": jax.device_put(np.full((8, i + 1), i, np.float32), replicated)
            for i in range(6)}
  state = state_lib.TrainState(step=jax.device_put(np.int32(2), replicated), params=params,
                               opt_state={"count": jax.device_put(np.int32(7), replicated)})
  slices = []
  from jax._src import dispatch  # Where eager primitives run.
  apply = dispatch.apply_primitive

  def counting(prim, *args, **kw):
    slices.append(prim.name) if prim.name == "slice" else None
    return apply(prim, *args, **kw)

  dispatch.apply_primitive = counting
  try:
    saver = checkpoint_lib.Checkpointer(tmp_path)
    saver.save(state, None)
    saver.wait()
  finally:
    dispatch.apply_primitive = apply
  assert not slices
  other = sharding.make_mesh((1, 1, 8))
  shardings = jax.tree.map(lambda _: jax.sharding.NamedSharding(
      other, jax.sharding.PartitionSpec()), state)
  restored = saver.restore(2, jax.eval_shape(lambda: state), shardings)
  for k, v in params.items():
    np.testing.assert_array_equal(restored.params[k], v)
  saver.close()


def _answers_as_its_evaluation(c, workdir, tmp_path, capsys):
  """`python -m mmjax.generate --workdir` answers a question about an evaluation image (saved as
  a PNG) exactly as the run's VQA evaluation answers it (its prompt, its views, greedy)."""
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  record = build.data_source(c, c.data.eval_split)[0]
  asked = vqa.ask(c, tok, [record], config)
  fmt = build.formatter(c, c.train.task, config, tok)
  spec = step_lib.model_batch(build.example_batch(fmt, build.data_source(c, "train"), 2))
  _, params = evaluation._restore(c, workdir, mllm.MLLM(config), spec, loop.mesh_from_config(c),
                                  None)
  tokens, lengths = sampling.generate(
      mllm.MLLM(config), {"params": params}, asked.prompts[:1],
      {k: v[None] for k, v in asked.views[0].items()}, max_new_tokens=c.eval.max_new_tokens,
      eos_id=tok.eos_id, pad_id=tok.pad_id)
  image = tmp_path / "question.png"
  Image.fromarray(record["image"]).save(image)
  question = record["qa"]["question"][0].decode()
  capsys.readouterr()  # What the evaluation printed.
  assert generate.main(["--workdir", str(workdir), "--image", str(image), "--prompt", question,
                        "--max_new_tokens", str(c.eval.max_new_tokens)]) == 0
  assert capsys.readouterr().out == tok.decode(tokens[0, :lengths[0]]) + "\n"


def test_end_to_end_without_recompiling_and_eval_on_another_mesh(data_dir, tmp_path, capsys):
  short, long = tmp_path / "short", tmp_path / "long"
  # The process's first run also compiles eager ops once; only a second run's count is the loop's.
  loop.train(tiny(data_dir, steps=1), tmp_path / "warm")
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *_, **__: compiles.append(name) if "backend_compile" in name else None)
  loop.train(tiny(data_dir, steps=4), short)
  n_short = len(compiles)
  loop.train(tiny(data_dir, steps=8), long)
  assert len(compiles) - n_short == n_short  # Twice the steps, no more compilations.
  rows = [json.loads(line) for line in (long / "metrics.jsonl").open()]
  assert [r["step"] for r in rows] == list(range(1, 9))
  assert {"loss", "lr", "grad_norm", "tokens_per_sec", "examples_per_sec", "step_time",
          "mfu"} <= rows[-1].keys()
  assert list((long / "tensorboard").glob("events.out.tfevents.*"))
  asked = ("background_colour", "box_position", "pattern_colours")  # One kind per family.
  on_kinds = tiny(data_dir, steps=8, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2,
                                        "data.kinds": ",".join(asked)})
  with pytest.raises(ValueError, match=r"data.kinds '' → 'background_colour,box_position,"
                     r"pattern_colours'; pass the run's config \(--allow_eval_changes"):
    evaluation.evaluate(on_kinds, long)  # Other eval settings than the run's, unasked.
  result = evaluation.evaluate(on_kinds, long, allow_eval_changes=True)
  saved = json.loads((long / "eval" / "8.json").read_text())
  assert saved["step"] == 8 and set(saved["accuracy"]) == {"fine", "coarse", "position"}
  assert tuple(saved["accuracy_by_kind"]) == asked
  # A fixed-resolution tower spends its whole budget on every image.
  assert saved["visual_tokens_per_image"] == saved["visual_token_budget"] > 0
  assert saved == json.loads(json.dumps(result))
  assert saved["config"]["data"]["kinds"] == ",".join(asked)  # The config it was computed with.
  _answers_as_its_evaluation(tiny(data_dir, steps=8), long, tmp_path, capsys)
  # Checked before any checkpoint is read: this run's checkpoint folder is empty.
  (tmp_path / "untrained" / "checkpoints" / "8").mkdir(parents=True)
  shutil.copy(long / "config.json", tmp_path / "untrained")
  with pytest.raises(ValueError, match="eval.max_new_tokens=8 cannot hold the answer"):
    evaluation.evaluate(tiny(data_dir, steps=8, **{"eval.max_new_tokens": 8,
                                                   "data.kinds": "pattern_colours"}),
                        tmp_path / "untrained", allow_eval_changes=True)


def test_evaluators_run_during_training_as_eval_py_runs_them(data_dir, tmp_path):
  """`evals.NAME.every`: the evaluator runs every that many steps into metrics.jsonl, and its
  numbers are eval.py's on the checkpoint of that step."""
  c = tiny(data_dir, steps=4, **{"train.checkpoint_every": 2, "train.log_every": 4,
                                 "train.align_fraction": 0.0, "data.kinds": "background_colour",
                                 "evals.loss.every": 2, "evals.vqa.every": 4})
  loop.train(c, tmp_path)
  rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").open())}
  assert sorted(rows) == [2, 4]
  assert not any(k.startswith("vqa/") for k in rows[2])
  for step in (2, 4):
    result = evaluation.evaluate(c, tmp_path, step)
    np.testing.assert_allclose(rows[step]["loss/loss"], result["loss"], rtol=1e-6)
    assert rows[step]["loss/loss_tokens"] == result["loss_tokens"] > 0
  assert rows[4]["vqa/accuracy/coarse"] == result["accuracy"]["coarse"]
  assert (rows[4]["vqa/accuracy_by_kind/background_colour"] ==
          result["accuracy_by_kind"]["background_colour"])
  c.evals.loss.type = "vqa"
  with pytest.raises(ValueError, match="evals.loss and evals.vqa are both 'vqa'"):
    loop.train(c, tmp_path / "bad")
  c.evals.loss.type = "bleu"
  with pytest.raises(ValueError, match=r"evals.loss.type='bleu' is not an evaluator; valid: "
                     r"\['loss', 'vqa'\]"):
    loop.train(c, tmp_path / "bad")
  with pytest.raises(ValueError, match="is not an evaluator"):
    evaluation.evaluate(c, tmp_path)
  assert sorted(evaluators.EVALUATORS) == ["loss", "vqa"]


def _run(command, env=None, timeout=300):
  return subprocess.run(["timeout", "-k", "10", str(timeout)] + command, cwd=ROOT, env=env,
                        capture_output=True, text=True)


def _wait_for_step(process, workdir, step, limit=240):
  metrics = pathlib.Path(workdir) / "metrics.jsonl"
  deadline = time.time() + limit
  while time.time() < deadline and process.poll() is None:
    if metrics.exists() and max(_losses(metrics.parent) or [0]) >= step:
      return
    time.sleep(0.2)
  raise AssertionError(f"training never reached step {step}: {process.poll()}")


def _damage(checkpoint: pathlib.Path, how: str) -> pathlib.Path:
  """Truncates or deletes the largest array file of `checkpoint`'s parameters."""
  files = [f for f in (checkpoint / "params").rglob("*") if f.is_file()]
  largest = max(files, key=lambda f: f.stat().st_size)
  if how == "truncate":
    largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
  else:
    largest.unlink()
  return largest


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_resume_and_eval_fall_back_past_a_damaged_newest_checkpoint(data_dir, tmp_path, how,
                                                                   caplog):
  """A damaged newest checkpoint is moved aside with one warning naming it, and training goes on
  from the one before as if nothing had happened (the same losses as an unbroken run); eval
  falls back the same way; with none left that restores, one clear error."""
  broken = tmp_path / "broken"
  kw = {"train.checkpoint_every": 2, "train.align_fraction": 0.0}
  loop.train(tiny(data_dir, steps=6, **kw), broken)
  before = _losses(broken)  # The unbroken run's losses, steps 1–6.
  # As if the run had crashed after writing step 4, damaging it: step 6 was never written.
  shutil.rmtree(broken / "checkpoints" / "6")
  _damage(broken / "checkpoints" / "4", how)
  with caplog.at_level("WARNING"):
    loop.train(tiny(data_dir, steps=6, **kw), broken)
  warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert re.match(r"Checkpoint step 4 in \S+ does not restore \(\w+: .+\)\. Moved it to "
                  r"\S+checkpoints.unreadable/4; resuming", warnings[0]), warnings[0]
  assert (broken / "checkpoints.unreadable" / "4" / "params").is_dir()
  # Steps 3 and 4 re-run from checkpoint 2 (their rows are the re-run's: the last logged wins).
  after = _losses(broken)
  assert [r["step"] for r in map(json.loads, (broken / "metrics.jsonl").open())] == [
      1, 2, 3, 4, 5, 6, 3, 4, 5, 6]
  np.testing.assert_allclose([after[s] for s in (3, 4, 5, 6)], [before[s] for s in (3, 4, 5, 6)],
                             rtol=1e-6)
  # eval.py: the newest (6) damaged, it evaluates 4 and moves nothing.
  _damage(broken / "checkpoints" / "6", how)
  c = tiny(data_dir, steps=6, **kw)
  model = mllm.MLLM(build.model_config(c, build.tokenizer(c).vocab_size))
  spec = step_lib.model_batch(build.example_batch(
      build.formatter(c, c.train.task, model.config, build.tokenizer(c)),
      build.data_source(c, c.data.eval_split), 1))
  step, _ = evaluation._restore(c, broken, model, spec, loop.mesh_from_config(c), None)
  assert step == 4 and (broken / "checkpoints" / "6").is_dir()
  for left in (2, 4):
    _damage(broken / "checkpoints" / str(left), how)
  with pytest.raises(loop.NoCheckpointRestores, match=r"No checkpoint of \S+ restores \(steps "
                     r"\[6, 4, 2\] are in"):
    loop.train(tiny(data_dir, steps=8, **kw), broken)
  with pytest.raises(loop.NoCheckpointRestores, match="move one back"):  # Never starts over.
    loop.train(tiny(data_dir, steps=8, **kw), broken)


def test_kill_and_rerun_continues_the_same_loss_curve(data_dir, tmp_path):
  c = tiny(data_dir)
  steps = 8
  # The unbroken run in this process (with train.py's XLA flags: tests/conftest.py), its
  # programs cached for the train.py processes below.
  loop.train(tiny(data_dir, steps=steps, **{"train.checkpoint_every": 2}), tmp_path / "whole")
  process = subprocess.Popen(_flags(c, tmp_path / "killed", steps), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_step(process, tmp_path / "killed", 5)
  process.send_signal(signal.SIGKILL)
  process.wait()
  resumed = _run(_flags(c, tmp_path / "killed", steps))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # The run's own lines and the progress bar on stderr; the libraries' logs in its log file.
  shown = [line for line in re.split(r"[\r\n]", resumed.stderr)
           if line.strip() and not re.search(r"\d+/\d+ \[", line)]
  assert shown and all(line.startswith(("Stage ", "Resumed stage ")) for line in shown), shown
  assert "checkpoint_manager.py" in (tmp_path / "killed" / "log.txt").read_text()
  resumed_at = int(re.search(r"Resumed stage \w+ at step (\d+)", resumed.stderr).group(1))
  assert 2 <= resumed_at <= 5
  whole, killed = _losses(tmp_path / "whole"), _losses(tmp_path / "killed")
  assert sorted(killed) == sorted(whole) == list(range(1, steps + 1))
  np.testing.assert_allclose([killed[s] for s in whole], list(whole.values()), rtol=1e-6)


def test_sigterm_saves_a_checkpoint_before_exiting(data_dir, tmp_path):
  c = tiny(data_dir)
  command = _flags(c, tmp_path, 40)
  command[-1] = "--config.train.checkpoint_every=1000"
  command.append("--config.data.worker_count=1")
  # Its own process group, signalled as a whole, as schedulers preempt: the data workers get the
  # SIGTERM too and must not take the checkpoint down with them.
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
  _wait_for_step(process, tmp_path, 3)
  os.killpg(process.pid, signal.SIGTERM)
  assert process.wait(timeout=120) == loop.PREEMPTED_EXIT_CODE
  deadline = time.time() + 30
  while time.time() < deadline and _group_alive(process.pid):
    time.sleep(0.2)
  assert not _group_alive(process.pid), "data workers outlived the trainer"
  saved = checkpoint_lib.Checkpointer(tmp_path / "checkpoints").all_steps()
  assert len(saved) == 1 and 3 <= saved[0] < 40 and saved[0] >= max(_losses(tmp_path))


def _group_alive(pgid: int) -> bool:
  try:
    os.killpg(pgid, 0)
  except ProcessLookupError:
    return False
  return True


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(data_dir, tmp_path):
  c = tiny(data_dir)
  steps = 3
  env = {**os.environ, "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
         "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=2")}
  # One process (this one, on its 8 devices) against two of 2 devices each.
  loop.train(tiny(data_dir, steps=steps, **{"train.checkpoint_every": 2}), tmp_path / "one")
  port = _free_port()
  procs = [subprocess.Popen(
      ["timeout", "-k", "10", "300"] + _flags(c, tmp_path / "two", steps) + [
          f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
          "--heartbeat_timeout_seconds=20", "--shutdown_timeout_seconds=20"],
      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for p in procs:
    _, err = p.communicate()
    assert p.returncode == 0, err[-3000:]
  one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(one) == sorted(two) == list(range(1, steps + 1))
  np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-5)


@pytest.mark.parametrize("method", ["llava15", "llava_hr", "leo", "qwen2vl", "internvl15",
                                    "llava_onevision", "xcomposer2_4khd", "oryx"])
def test_config_arguments_resize_the_budgets_and_keep_the_text_room(method):
  """`patch=` re-derives the token budgets, and max_len always leaves the size's text room
  (256 tokens minus the 49 of a 224-px ViT at patch 32) beside the tower's visual tokens."""
  for arg in ("", ",patch=16", ",res=448"):
    c = config_args.get_config(ROOT / "configs" / f"{method}.py", "size=small" + arg)
    config = build.model_config(c, 300)
    tokens = config.max_visual_tokens
    assert build.max_len(c, config) - tokens == 256 - 49, arg
    if arg == ",patch=16":
      assert c.model.tower.vit.patch_size == 16
      if method in ("llava15", "qwen2vl", "internvl15"):  # 224 px at patch 16: 14 × 14.
        assert tokens == 196


def test_resuming_with_another_model_fails_clearly(data_dir, tmp_path):
  loop.train(tiny(data_dir, steps=2), tmp_path)
  with pytest.raises(ValueError, match=r"differs from the run's config.json in 1 field: "
                     r"model\.llm\.width 64 → 128"):
    loop.train(tiny(data_dir, steps=4, **{"model.llm.width": 128}), tmp_path)


# Every config file (default.py is llava15.py's alias), so a new method's config is run too.
@pytest.mark.parametrize("method", config_golden.METHODS)
def test_every_method_config_trains_and_evaluates_at_tiny_size(data_dir, tmp_path, method):
  c = config_args.get_config(ROOT / "configs" / f"{method}.py", "size=tiny,steps=3")
  c.data.data_dir = data_dir
  c.train.log_every = 1
  c.train.batch_size = 8  # One row per simulated device.
  # One stage, one compiled step: the stage switch is tested end to end (CI minutes).
  c.train.align_fraction = 0.0
  c.data.eval_examples = 2
  c.eval.batch_size = 8
  loop.train(c, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["model"]["tower"] == json.loads(c.model.tower.to_json())
  result = evaluation.evaluate(c, tmp_path)
  assert sum(result["questions"].values()) > 0 and np.isfinite(result["loss"])


def test_eval_leaves_out_and_counts_images_the_policy_refuses(data_dir):
  c = config_args.get_config(ROOT / "configs" / "oryx.py", "size=tiny")
  c.data.data_dir, c.data.eval_examples = data_dir, 16
  c.model.tower.max_aspect = 1.3  # Oryx's static budget then refuses every image past 1.3:1.
  tok = build.tokenizer(c)
  source = build.data_source(c, c.data.eval_split)
  asked = vqa.ask(c, tok, source, build.model_config(c, tok.vocab_size))
  wide = [i for i in range(16) if max(source[i]["height"], source[i]["width"]) /
          min(source[i]["height"], source[i]["width"]) > 1.3]
  assert 0 < len(wide) < 16 and asked.refused == wide
  assert len(asked.image_tokens) == 16 - len(wide)
  c.model.tower.max_aspect = 1.0001  # Now every image is refused: a clear error, not an empty score.
  with pytest.raises(ValueError, match="refused all 16 evaluated images"):
    vqa.ask(c, tok, source, build.model_config(c, tok.vocab_size))


def test_eval_loss_counts_every_image_once(data_dir):
  """Fewer images than the mesh has batch shards, and a last partial batch: the loss is still
  that of every evaluated image's answer tokens, each counted once (one image at a time here)."""
  c = tiny(data_dir, **{"eval.batch_size": 8})
  mesh = loop.mesh_from_config(c)
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  model = mllm.MLLM(config)
  source = build.data_source(c, c.data.eval_split)
  fmt = build.formatter(c, c.train.task, config, tok)
  spec = step_lib.model_batch(build.example_batch(fmt, source, 1))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), spec)["params"])
  one = jax.jit(lambda p, b: step_lib.eval_step(p, b, model=model))
  rows = [one(params, step_lib.model_batch(b)) for b in pipeline.make_loader(
      [source[i] for i in range(11)], fmt, global_batch_size=1, seed=0, shuffle=False,
      num_epochs=1)]
  for examples in (3, 11):  # Under one batch of 8; one batch and a partial one.
    c.data.eval_examples = examples
    with jax.set_mesh(mesh), sharding.axis_rules():
      got = loss_evaluator.loss(c, model, params, tok, source, config, mesh)
    tokens = sum(float(r["tokens"]) for r in rows[:examples])
    assert got["loss_tokens"] == tokens > 0
    np.testing.assert_allclose(
        got["loss"], sum(float(r["loss_sum"]) for r in rows[:examples]) / tokens, rtol=1e-5)


@pytest.mark.parametrize("method", ["llava15", "qwen2vl"])
def test_records_of_several_images_train_and_those_over_the_budget_are_counted(tmp_path, method):
  """An ingested LLaVA-OneVision-format JSON (one, two and three images a record, tags anywhere,
  text-only ones) trains with two images a row (`data.max_images`) on a fixed and a native
  tower: each image its own row of the tower; the three-image records are dropped and counted."""
  from mmjax.data import ingest
  for i in range(3):
    Image.fromarray(np.random.default_rng(i).integers(0, 256, (40 + 8 * i, 56, 3), np.uint8)
                    ).save(tmp_path / f"{i}.png")
  def turns(*pairs):
    return [{"from": who, "value": text} for pair in pairs for who, text in
            zip(("human", "gpt"), pair)]
  records = []
  for n in range(24):
    kind = n % 4
    images = [f"{(n + j) % 3}.png" for j in range(kind)]
    if kind == 0:
      conversation = turns(("Say hello.", "Hello."))
    elif kind == 2:
      conversation = turns(("<image>\nIs this the first?", "Yes."),
                           ("And <image>, the second one?", "No."))
    else:
      conversation = turns(("".join("<image>\n" for _ in images) + "Which is larger?", "The first."))
    records.append({"id": str(n), "conversations": conversation, **({"image": images} if images
                                                                      else {})})
  (tmp_path / "data.json").write_text(json.dumps(records))
  report = ingest.ingest(tmp_path / "data.json", tmp_path, tmp_path / "ds")
  assert report["accepted"] == 24
  c = config_args.get_config(ROOT / "configs" / f"{method}.py", "size=tiny,steps=2")
  c.data.dataset, c.data.max_images = f"llava_json:{tmp_path / 'ds'}", 2
  c.train.task = c.train.align_task = "conversation"
  c.train.align_fraction, c.train.batch_size, c.train.log_every = 0.0, 8, 1
  c.train.max_dropped_share = 0.5  # A quarter of the records hold three images.
  c.evals = {}
  loop.train(c, tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  assert all(np.isfinite(r["loss"]) for r in rows)
  too_many = sum(r["too_many_images"] for r in rows)
  assert too_many > 0 and sum(r["dropped"] for r in rows) >= too_many
  # A two-image record's row: both images' views and placeholders, in a batch the model reads.
  tok = build.tokenizer(c)
  fmt = build.formatter(c, "conversation", build.model_config(c, tok.vocab_size), tok)
  source = build.data_source(c, "train")
  two = next(r for r in (source[i] for i in range(len(source))) if len(r["extra_images"]) == 1)
  row = fmt.random_map(two, np.random.default_rng(0))
  assert row["dropped"] == 0 and row["image_tokens"].shape == (2,)
  assert (row["image_tokens"] > 0).all()
  assert np.sum(row["tokens"] == tok.image_id) == row["image_tokens"].sum()
  # The run answers a one-image prompt (its rows keep the image axis).
  image = tmp_path / "0.png"
  assert generate.main(["--workdir", str(tmp_path / "run"), "--image", str(image), "--prompt",
                        "What is shown?", "--max_new_tokens", "3"]) == 0
