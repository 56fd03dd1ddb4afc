"""Tower pre-training and starting a run from saved parameters (`train.init_params`)."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image
import torch
import transformers

from mmjax import config_args
from mmjax import evaluation
from mmjax.convert import __main__ as convert_main
from mmjax.convert import files
from mmjax.convert import hf
from mmjax.convert import layout
from mmjax.convert import mapping
from mmjax.data.datasets import questions
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models import vit
from mmjax.training import build
from mmjax.training import checkpoint as checkpoint_lib
from mmjax.training import loop
from mmjax.training import optim
from mmjax.training import pretrain_tower
from mmjax.training import state as state_lib
from mmjax.training import step as step_lib
from tests import hf_models
from tests import method_configs

DEFAULT = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  build.finedetail.prepare("tiny", path)
  return path


def tiny(data_dir, tower="vit"):
  c = method_configs.get(tower, "size=tiny,steps=2")
  c.data.data_dir = data_dir
  c.data.eval_examples = 8
  return c


def _pretrain(c, workdir, **fields):
  """Stage 0 alone into `workdir`, with `fields` set in `c.pretrain`."""
  for name, value in fields.items():
    setattr(c.pretrain, name, value)
  return loop.pretrain_tower(c, workdir)


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pre")
  accuracy = _pretrain(tiny(data_dir), workdir, steps=3, batch=8, lr=1e-3,
                       eval_every=3)
  return workdir, accuracy


def _factory(c):
  config = build.model_config(c, build.tokenizer(c).vocab_size)
  model = mllm.MLLM(config)
  fmt = build.formatter(c, c.train.task, config, build.tokenizer(c))
  batch = step_lib.model_batch(build.example_batch(fmt, build.data_source(c, "train"), 2))
  params = state_lib.abstract_params(model, batch)
  tx = optim.optimizer(params, lr=optim.schedule(1e-3, 0, 2), weight_decay=0.0, grad_clip=1.0,
                       trainable=".*")
  return state_lib.Factory(model, tx, batch, loop.mesh_from_config(c))


def test_pretraining_writes_the_tower_and_its_curve(pretrained):
  workdir, accuracy = pretrained
  saved = json.loads((workdir / "pretrain.json").read_text())
  assert saved["curve"][-1]["step"] == 3 and set(accuracy) - {"step", "loss", "seconds"}
  assert saved["stopped"] == "steps" and saved["until"] is None
  assert all(0 <= v <= 1 for k, v in accuracy.items() if k not in ("step", "loss", "seconds"))
  assert list(files.load_params(workdir / files.PARAMS_FILE)) == ["vit"]


def test_a_run_starts_from_the_pretrained_tower_and_random_elsewhere(data_dir, pretrained):
  c = tiny(data_dir)
  c.train.init_params = f"tower={pretrained[0]}"
  factory = _factory(c)
  state = factory.create(jax.random.key(0),
                         build.initial_params(c.train.init_params, factory.abstract.params))
  fresh = factory.create(jax.random.key(0))
  saved = mapping.flatten(files.load_params(pretrained[0] / files.PARAMS_FILE))
  got = mapping.flatten(jax.tree.map(np.asarray, state.params["tower"]))
  assert saved.keys() == got.keys()
  for key in saved:
    np.testing.assert_array_equal(got[key], saved[key], err_msg="/".join(key))
  assert any(not np.array_equal(got[k], v) for k, v in mapping.flatten(
      jax.tree.map(np.asarray, fresh.params["tower"])).items())
  for part in ("llm", "projector"):
    jax.tree.map(np.testing.assert_array_equal, state.params[part], fresh.params[part])
  zero = jax.tree.leaves(jax.tree.map(lambda m: float(np.abs(m).max()), state.opt_state))
  assert max(zero) == 0.0  # A new optimizer state, not one carried over from pre-training.


@pytest.mark.parametrize("entry, message", [
    ("tower", "not SUBTREE=PATH"),
    ("tower/encoder=X", r"no parameters 'tower/encoder' \(tower holds \['vit'\]\)"),
    ("llm=PRE", "does not fit 'llm': missing"),
    ("tower=/nonexistent", "no parameter file"),
    ("tower/vit=PRE#encoder", r"holds no 'encoder' \(its top level holds \['vit'\]\)"),
])
def test_init_params_errors_name_the_entry_and_the_reason(data_dir, pretrained, entry, message):
  c = tiny(data_dir)
  c.train.init_params = entry.replace("PRE", str(pretrained[0]))
  with pytest.raises(ValueError, match=message):
    build.initial_params(c.train.init_params, _factory(c).abstract.params)


def test_another_towers_vit_starts_from_a_part_of_the_file(data_dir, pretrained):
  """InternVL's tiles go through the ViT of a pre-trained LLaVA-1.5 tower (`#vit`)."""
  c = tiny(data_dir, tower="internvl")
  c.train.init_params = f"tower/vit={pretrained[0]}#vit"
  params = build.initial_params(c.train.init_params, _factory(c).abstract.params)
  saved = mapping.flatten(files.load_params(pretrained[0] / files.PARAMS_FILE)["vit"])
  got = mapping.flatten(jax.tree.map(np.asarray, params["tower"]["vit"]))
  assert list(params) == ["tower"] and list(params["tower"]) == ["vit"]
  assert saved.keys() == got.keys()
  for key in saved:
    np.testing.assert_array_equal(got[key], saved[key], err_msg="/".join(key))


def test_a_tower_of_another_shape_is_refused(data_dir, pretrained):
  c = tiny(data_dir)
  c.model.tower.vit.width = 48
  c.train.init_params = f"tower={pretrained[0]}"
  with pytest.raises(ValueError, match=r"shape \(file, model\)"):
    build.initial_params(c.train.init_params, _factory(c).abstract.params)


def test_a_run_starts_from_a_converted_hugging_face_clip(data_dir, tmp_path):
  """`python -m mmjax.convert` output plugs in as the tower's ViT (LLaVA's starting point), with
  CLIP's linear patch stem; a CPU-size config's hMLP stem is refused, naming the fix."""
  c = tiny(data_dir)
  v = c.model.tower.vit
  clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
      num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size,
      hidden_act="gelu"))
  hf_models.save(hf_models.perturb(clip), tmp_path / "hf")
  assert convert_main.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mm")]) == 0
  c.train.init_params = f"tower/vit={tmp_path / 'mm'}"
  assert v.stem == "hmlp"
  with pytest.raises(ValueError, match="missing .*stem/level0.*unexpected .*patch_kernel.*"
                     r"stem='patch' \(e.g. model.tower.vit.stem\)"):
    build.initial_params(c.train.init_params, _factory(c).abstract.params)
  v.stem = "patch"
  factory = _factory(c)
  state = factory.create(jax.random.key(0),
                         build.initial_params(c.train.init_params, factory.abstract.params))
  pixels = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = clip(torch.from_numpy(pixels), output_hidden_states=True).hidden_states[-2]
  ours = vit.ViT(factory.model.config.tower.vit).apply(
      {"params": state.params["tower"]["vit"]}, pixels.transpose(0, 2, 3, 1),
      method="hidden_states")[-2]
  np.testing.assert_allclose(np.asarray(ours), expected.numpy(), atol=1e-4)


def test_a_run_fine_tunes_a_converted_whole_llava(data_dir, tmp_path):
  """`train.init_params=DIR` (a whole `LlavaForConditionalGeneration`, built here to the tiny
  config's shapes and converted): every parameter starts from it; the run fine-tunes it on an
  ingested LLaVA JSON with bfloat16 compute and LLaVA's trainable pattern (projector and LLM),
  the tower unchanged."""
  c = tiny(data_dir)
  c.model.tower.vit.stem = "patch"  # CLIP's linear patch embedding.
  vocab = build.tokenizer(c).vocab_size
  arch = "LlavaForConditionalGeneration"
  own = build.model_config(c, vocab)
  hf_config = hf.converter(arch).config_to_hf(
      dataclasses.replace(own, image_token_id=vocab - 1, image_token_in_vocab=True), arch)
  model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**hf_config))
  hf_models.save(hf_models.perturb(model), tmp_path / "hf")
  assert convert_main.main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mm")]) == 0
  converted = mapping.flatten(files.load_params(tmp_path / "mm" / files.PARAMS_FILE))
  c.train.init_params = str(tmp_path / "mm")
  start = mapping.flatten(build.initial_params(c.train.init_params, _factory(c).abstract.params))
  assert start.keys() == converted.keys()
  for key in converted:
    np.testing.assert_array_equal(start[key], converted[key], err_msg="/".join(key))
  # Fine-tuned on an ingested LLaVA-format JSON (multi-turn and text-only records).
  from mmjax.data import ingest
  rng = np.random.default_rng(0)
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(tmp_path / f"{i}.png")
  records = [{"id": str(n), "image": f"{n % 4}.png", "conversations": [
      {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "Noise."},
      {"from": "human", "value": "Is it grey?"}, {"from": "gpt", "value": "No."}]}
             for n in range(12)] + [{"id": "text", "conversations": [
                 {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]}]
  (tmp_path / "data.json").write_text(json.dumps(records))
  assert ingest.ingest(tmp_path / "data.json", tmp_path, tmp_path / "ds")["accepted"] == 13
  c.data.dataset = f"llava_json:{tmp_path / 'ds'}"
  c.train.task = c.train.align_task = "conversation"
  c.model.dtype, c.train.align_fraction, c.train.batch_size = "bfloat16", 0.0, 8
  c.train.trainable = "^(projector|llm)/"
  c.evals = {}
  metrics = loop.train(c, tmp_path / "run")
  assert np.isfinite(metrics["loss"])
  spec = step_lib.model_batch(build.example_batch(
      build.formatter(c, c.train.task, build.model_config(c, vocab), build.tokenizer(c)),
      build.data_source(c, "train"), 2))
  _, params = evaluation._restore(c, tmp_path / "run", mllm.MLLM(build.model_config(c, vocab)),
                                  spec, loop.mesh_from_config(c), 2)
  got = mapping.flatten(jax.tree.map(np.asarray, params))
  for key in converted:
    same = np.array_equal(got[key], converted[key])
    assert same == (key[0] == "tower"), "/".join(key)  # Only the tower stays frozen.


def test_pretraining_stops_once_every_kind_reaches_the_target(data_dir, tmp_path):
  _pretrain(tiny(data_dir), tmp_path, steps=3, batch=8, lr=1e-3, eval_every=1,
            until=0.0, schedule="constant")
  saved = json.loads((tmp_path / "pretrain.json").read_text())
  assert [p["step"] for p in saved["curve"]] == [1] and saved["stopped"] == "until"
  assert saved["schedule"] == "constant"
  with pytest.raises(ValueError, match="until=1.5"):
    _pretrain(tiny(data_dir), tmp_path, steps=3, batch=8, lr=1e-3, eval_every=1,
              until=1.5)
  with pytest.raises(ValueError, match=r"schedule='linear': valid schedules are \['constant', "
                                       r"'cosine'\]"):
    _pretrain(tiny(data_dir), tmp_path, steps=3, batch=8, lr=1e-3, eval_every=1,
              schedule="linear")


def test_the_constant_schedule_holds_the_peak_after_the_warm_up():
  constant = pretrain_tower.SCHEDULES["constant"](2e-3, 20, 200)
  cosine = pretrain_tower.SCHEDULES["cosine"](2e-3, 20, 200)
  np.testing.assert_allclose([constant(s) for s in (10, 20, 125, 200)], [1e-3, 2e-3, 2e-3, 2e-3],
                             rtol=1e-6)
  np.testing.assert_allclose([cosine(s) for s in (10, 20, 200)], [1e-3, 2e-3, 0.0], atol=1e-9)
  assert cosine(125) < 0.4 * 2e-3  # What `until` runs met before: less than half the peak.


def test_pretraining_needs_the_embedded_dataset(tmp_path):
  c = config_args.get_config(DEFAULT, "size=tiny")
  c.data.dataset = "llava_json:/somewhere"
  with pytest.raises(ValueError, match="question labels"):
    _pretrain(c, tmp_path, steps=1, batch=1, lr=1e-3, eval_every=1)


def test_pretraining_on_chosen_question_kinds(data_dir, tmp_path):
  """pretrain.kinds, else data.kinds: the tower can learn one rung while the MLLM asks more."""
  c = tiny(data_dir)
  c.pretrain.kinds = ""
  c.data.kinds = "pattern_colours,background_colour"
  accuracy = _pretrain(c, tmp_path, steps=2, batch=8, lr=1e-3, eval_every=2)
  assert set(accuracy) - {"step", "loss", "seconds"} == {"pattern_colours", "background_colour"}
  answers = json.loads((tmp_path / "pretrain.json").read_text())["answers"]
  assert "red and cyan" in answers and not any(a.isdigit() for a in answers)  # No codes/counts.
  settings = {"steps": 2, "batch": 8, "lr": 1e-3}
  assert pretrain_tower.finished(tmp_path, settings, json.loads(c.to_json()))
  c.pretrain.kinds = "pattern_colours"
  assert not pretrain_tower.finished(tmp_path, settings, json.loads(c.to_json()))
  accuracy = _pretrain(c, tmp_path / "one", steps=2, batch=8, lr=1e-3, eval_every=2)
  assert set(accuracy) - {"step", "loss", "seconds"} == {"pattern_colours"}
  assert pretrain_tower.finished(tmp_path / "one", settings, json.loads(c.to_json()))
  c.pretrain.kinds = "pattern_colour"
  with pytest.raises(ValueError, match=r"pretrain.kinds has unknown question kinds "
                     r"\['pattern_colour'\]; valid: 'legible' or pattern_colours"):
    _pretrain(c, tmp_path / "bad", steps=2, batch=8, lr=1e-3, eval_every=2)


def test_a_tower_at_the_low_resolution_pretrains_on_the_legible_kinds_by_default():
  """Fine and position content is below legibility at 224 px by construction: stage 0 of a
  tower that sees one view of no more leaves it out, unless nothing else is asked; a tower that
  sees more (a larger view; native resolution or tiles of that side) learns every kind asked."""
  def kinds(arg, data_kinds=""):
    tower, _, arg = arg.rpartition(":")
    c = method_configs.get(tower or "vit", arg)
    c.data.kinds = data_kinds
    return build.question_kinds(c, "pretrain.kinds")

  assert kinds("size=small") == questions.KINDS["coarse"]
  assert kinds("size=small", "pattern_code,texture,mark_position") == ("texture",)
  assert kinds("size=small", "pattern_colours") == ("pattern_colours",)
  for arg in ("size=small,res=448", "llava_hr:size=small", "mini_gemini:size=small",
              "qwen2vl:size=small", "internvl:size=small"):  # Native / tiles: more.
    assert kinds(arg) == (), arg
    assert kinds(arg, "pattern_code,texture") == ("pattern_code", "texture"), arg
  c = config_args.get_config(DEFAULT, "size=small")
  c.pretrain.kinds = "legibel"
  with pytest.raises(ValueError, match=r"pretrain.kinds has unknown question kinds \['legibel'\]; "
                                       r"valid: 'legible' or pattern_colours"):
    build.question_kinds(c, "pretrain.kinds")


def test_batches_prepared_on_threads_or_from_cached_views_are_the_same_batches(data_dir,
                                                                              tmp_path):
  """Threads change when a batch is made, the view cache how, never which batch: the tower comes
  out identical (8 steps of 4 over the tiny split's images revisit cached ones)."""
  runs = []
  for workers, cache in ((0, False), (3, False), (3, True)):
    workdir = tmp_path / f"{workers}{cache}"
    _pretrain(tiny(data_dir), workdir, steps=8, batch=8, lr=1e-3, eval_every=4,
              workers=workers, cache_views=cache)
    runs.append(files.load_params(workdir / files.PARAMS_FILE))
  chex.assert_trees_all_equal(*runs)


def test_an_image_the_policy_refuses_is_left_out_and_counted(data_dir, tmp_path):
  c = tiny(data_dir, tower="oryx")
  c.model.tower.max_aspect = 1.3  # Oryx's static budget then refuses every image past 1.3:1.
  source = build.data_source(c, "train")
  config = build.model_config(c, 1)
  split = pretrain_tower._Questions(source, build.policy(c, config), config.max_visual_tokens)
  wide = np.asarray([max(source[i]["height"], source[i]["width"]) /
                     min(source[i]["height"], source[i]["width"]) > 1.3 for i in split.images])
  assert wide.any() and not wide.all()
  b = split.batch(split.images)
  refused = wide[b["index"]]
  assert b["mask"][refused].sum() == 0 and b["mask"][~refused].sum() > 0
  assert b["valid"][wide].sum() == 0 and b["valid"][~wide].sum() > 0
  assert split.refused == set(split.images[wide].tolist())
  c.model.tower.max_aspect = 1.0001  # Now every image is refused: a clear error, not a silent run.
  with pytest.raises(ValueError, match="question could be asked: the resolution policy refused"):
    _pretrain(c, tmp_path, steps=1, batch=8, lr=1e-3, eval_every=1)


def test_stage_zero_pretrains_the_tower_that_the_mllm_keeps_frozen(data_dir, tmp_path):
  c = config_args.get_config(DEFAULT, "size=tiny,steps=2,pretrain=3")
  c.data.data_dir, c.data.eval_examples, c.train.batch_size = data_dir, 8, 8
  c.pretrain.batch, c.pretrain.eval_every, c.pretrain.workers = 8, 3, 0
  assert (c.train.align_trainable, c.train.trainable) == ("^projector/", "^(projector|llm)/")
  loop.train(c, tmp_path)
  record = tmp_path / "tower" / "pretrain.json"
  assert json.loads(record.read_text())["stopped"] == "steps"
  saved = mapping.flatten(files.load_params(tmp_path / "tower" / files.PARAMS_FILE))
  config = build.model_config(c, build.tokenizer(c).vocab_size)
  fmt = build.formatter(c, c.train.task, config, build.tokenizer(c))
  spec = step_lib.model_batch(build.example_batch(fmt, build.data_source(c, "train"), 2))
  _, params = evaluation._restore(c, tmp_path, mllm.MLLM(config), spec,
                                  loop.mesh_from_config(c), 2)
  got = mapping.flatten(jax.tree.map(np.asarray, params["tower"]))
  assert saved.keys() == got.keys()
  for key in saved:  # Two MLLM steps later the tower is the pre-trained one.
    np.testing.assert_array_equal(got[key], saved[key], err_msg="/".join(key))
  # A finished stage 0 with the same settings is kept; another tower source is refused.
  written = record.stat().st_mtime_ns
  assert loop._with_pretrained_tower(c, tmp_path / "tower").train.init_params == \
      f"tower={tmp_path / 'tower'}"
  assert record.stat().st_mtime_ns == written
  c.train.init_params = f"tower/vit={tmp_path / 'tower'}#vit"
  with pytest.raises(ValueError, match="set pretrain.steps=0"):
    loop._with_pretrained_tower(c, tmp_path / "tower")


def test_train_py_runs_stage_zero_alone_and_exits_zero(data_dir, tmp_path):
  """train.steps=0: the tower's stage 0 alone, into WORKDIR/tower (the ablation harness runs it
  as a program and reads a non-zero exit as a failure)."""
  done = subprocess.run(
      [sys.executable, "train.py", f"--config={DEFAULT}:size=tiny",
       f"--config.data.data_dir={data_dir}", f"--workdir={tmp_path}", "--config.train.steps=0",
       "--config.pretrain.steps=1", "--config.pretrain.batch=8", "--config.pretrain.eval_every=1",
       "--config.pretrain.workers=0", "--config.data.eval_examples=8"],
      cwd=DEFAULT.parents[1], capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads((tmp_path / "tower" / "pretrain.json").read_text())["stopped"] == "steps"
  assert list(files.load_params(tmp_path / "tower" / files.PARAMS_FILE)) == ["vit"]
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_stage_zero_preempted_or_killed_midway_resumes_to_the_same_tower(data_dir, tmp_path,
                                                                         monkeypatch):
  """A run preempted (SIGTERM) after step 1, before any validation pass, saves a checkpoint
  there; its re-run dies after step 4 of 6 (checkpoints at every validation pass); the third
  run resumes from step 4's checkpoint (state, optimizer, data position) to the tower, curve
  and losses of an unbroken run. Other settings in that directory are refused."""
  settings = dict(steps=6, batch=8, lr=1e-2, eval_every=2, workers=2, cache_views=False)

  def config():
    c = tiny(data_dir)
    c.train.log_every = 1
    return c

  whole = _pretrain(config(), tmp_path / "whole", **settings)
  calls = []

  def interrupted(host):
    calls.append(1)
    if len(calls) == 1:
      os.kill(os.getpid(), signal.SIGTERM)  # Preempted during step 1.
    if len(calls) == 5:  # Step 5 of the second run: as a kill, nothing after step 4's save.
      raise KeyboardInterrupt
    return real(host)

  real = pretrain_tower.Setup.counts
  monkeypatch.setattr(pretrain_tower.Setup, "counts", staticmethod(interrupted))
  with pytest.raises(loop.Preempted):
    _pretrain(config(), tmp_path / "killed", **settings)
  assert checkpoint_lib.Checkpointer(tmp_path / "killed" / "checkpoints").all_steps() == [1]
  with pytest.raises(KeyboardInterrupt):
    _pretrain(config(), tmp_path / "killed", **settings)
  monkeypatch.undo()
  record = json.loads((tmp_path / "killed" / "pretrain.json").read_text())
  assert record["stopped"] is None and [r["step"] for r in record["curve"]] == [2, 4]
  with pytest.raises(ValueError, match="holds a stage 0 of other settings"):
    _pretrain(config(), tmp_path / "killed", **{**settings, "lr": 1e-3})
  assert _pretrain(config(), tmp_path / "killed", **settings) == whole
  chex.assert_trees_all_equal(files.load_params(tmp_path / "killed" / files.PARAMS_FILE),
                              files.load_params(tmp_path / "whole" / files.PARAMS_FILE))
  curves = [json.loads((tmp_path / d / "pretrain.json").read_text())["curve"]
            for d in ("killed", "whole")]
  assert curves[0] == curves[1] and [r["step"] for r in curves[0]] == [2, 4, 6]
  rows = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl").open()]
          for d in ("killed", "whole")]
  # Each step logged once: the runs resumed where the last one's checkpoint was, never earlier.
  assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == list(range(1, 7))
  assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
  assert rows[0][-1]["accuracy/background_colour"] == whole["background_colour"]


def _tower_file(c, path):
  """A freshly initialised tower's parameters, saved as pretrain_tower writes them."""
  config = build.model_config(c, build.tokenizer(c).vocab_size).tower
  module = towers.tower_for(config)
  images = config.policy("pad").blank()["images"][None]
  tower = jax.tree.map(np.asarray, nn.unbox(jax.jit(module.init)(jax.random.key(1),
                                                                 images)["params"]))
  files.save_params(path, tower)
  return tower


def test_a_vit_loads_into_llava_hrs_split_vit_and_computes_the_same_states(data_dir, tmp_path):
  """LLaVA-HR splits its ViT into block groups at the adapters; a plain ViT's blocks are
  renumbered into them on loading, so the split ViT computes the plain one's hidden states."""
  plain = tiny(data_dir)
  plain.model.tower.vit.depth = 4
  source = _tower_file(plain, tmp_path / "vit.safetensors")["vit"]
  c = tiny(data_dir, tower="llava_hr")
  c.model.tower.vit.depth = 4
  c.train.init_params = f"tower/vit={tmp_path / 'vit.safetensors'}#vit"
  factory = _factory(c)
  split = factory.model.config.tower.tower_vit
  assert split.groups == (1, 1, 1, 1)
  params = build.initial_params(c.train.init_params, factory.abstract.params)["tower"]["vit"]
  assert "blocks_3" in params and "blocks_1" not in source
  images = np.random.default_rng(0).normal(size=(2, split.image_size, split.image_size, 3))
  images = images.astype(np.float32)
  # Towers read hidden states, never the pooled output: no post-norm on either side, so a ViT
  # moves between them in both directions.
  assert "post_norm" not in params and "post_norm" not in source
  ours = vit.ViT(split).apply({"params": params}, images, method="hidden_states")
  plain_vit = build.model_config(plain, build.tokenizer(plain).vocab_size).tower.vit
  # LLaVA-HR's ViT drops the class token before the blocks (the authors' CLIP); the same here.
  plain_vit = dataclasses.replace(plain_vit, cls_in_blocks=False)
  expected = vit.ViT(plain_vit).apply({"params": source}, images, method="hidden_states")
  np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), atol=1e-6)


def test_a_fusion_trains_on_loaded_frozen_encoders(data_dir, tmp_path):
  """Stage 0 with `init_params` and `frozen`, as the ablation's shared encoders: the ViT (of a
  plain ViT tower) and the ConvNeXt (of another LLaVA-HR tower) keep their loaded values, the
  adapters' zero-initialised outputs move."""
  plain = tiny(data_dir)
  plain.model.tower.vit.depth = 4
  vit_source = _tower_file(plain, tmp_path / "vit.safetensors")["vit"]
  c = tiny(data_dir, tower="llava_hr")
  c.model.tower.vit.depth = 4
  convnext_source = _tower_file(c, tmp_path / "hr.safetensors")["convnext"]
  _pretrain(
      c, tmp_path / "run", steps=2, lr=1e-2, batch=8, eval_every=2, frozen="^tower/(vit|convnext)/",
      init_params=f"tower/vit={tmp_path / 'vit.safetensors'}#vit,"
                  f"tower/convnext={tmp_path / 'hr.safetensors'}#convnext")
  trained = files.load_params(tmp_path / "run" / files.PARAMS_FILE)
  vit_now = mapping.flatten(trained["vit"])
  regrouped = layout.regroup_blocks(mapping.flatten(vit_source), vit_now)
  chex.assert_trees_all_equal(vit_now, {k: regrouped[k] for k in vit_now})
  chex.assert_trees_all_equal(trained["convnext"], convnext_source)
  for out in ("low_out", "high_out"):  # Zero at initialisation.
    assert np.abs(trained["adapter_0"][out]["kernel"]).max() > 0, out


def test_a_mini_gemini_fusion_trains_on_the_encoders_of_a_llava_hr_tower(data_dir, tmp_path):
  """`encoders_from`: every ViT and ConvNeXt of the tower starts from the file's and stays
  fixed (LLaVA-HR's split ViT regrouped into Mini-Gemini's plain one), the mining trains."""
  hr = tiny(data_dir, tower="llava_hr")
  hr.model.tower.vit.depth = 4
  source = _tower_file(hr, tmp_path / "hr.safetensors")
  c = tiny(data_dir, tower="mini_gemini")
  c.model.tower.vit.depth = 4
  _pretrain(c, tmp_path / "mg", steps=2, batch=8, lr=1e-2, eval_every=2,
            encoders_from=str(tmp_path / "hr.safetensors"))
  trained = files.load_params(tmp_path / "mg" / files.PARAMS_FILE)
  vit_now = mapping.flatten(trained["vit"])
  chex.assert_trees_all_equal(vit_now,
                              layout.regroup_blocks(mapping.flatten(source["vit"]), vit_now))
  chex.assert_trees_all_equal(trained["convnext"], source["convnext"])
  assert "mining" in trained
  record = json.loads((tmp_path / "mg" / "pretrain.json").read_text())
  assert record["encoders_from"] == str(tmp_path / "hr.safetensors")
  with pytest.raises(ValueError, match="sets pretrain.init_params and pretrain.frozen itself"):
    _pretrain(c, tmp_path / "bad", steps=1, batch=8, lr=1e-3, eval_every=1,
              encoders_from=str(tmp_path / "hr.safetensors"), frozen="^tower/vit/")


def test_shared_encoders_train_with_the_fusion_or_make_the_whole_tower(data_dir, tmp_path):
  """`train_encoders`: the encoders start from the file's and move with the mining; a tower
  that is nothing but the shared encoders (LLaVA-1.5's ViT) is written as loaded, in either
  mode; `finished` keeps a run only under the settings it ran with."""
  hr = tiny(data_dir, tower="llava_hr")
  hr.model.tower.vit.depth = 4
  source = _tower_file(hr, tmp_path / "hr.safetensors")
  shared = str(tmp_path / "hr.safetensors")
  c = tiny(data_dir, tower="mini_gemini")
  c.model.tower.vit.depth = 4
  settings = {"steps": 2, "batch": 8, "lr": 1e-2, "encoders_from": shared,
              "train_encoders": True}
  _pretrain(c, tmp_path / "mg", eval_every=2, **settings)
  trained = files.load_params(tmp_path / "mg" / files.PARAMS_FILE)
  assert jax.tree.structure(trained["convnext"]) == jax.tree.structure(source["convnext"])
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(trained["convnext"]), jax.tree.leaves(source["convnext"]))]
  assert any(moved)
  assert pretrain_tower.finished(tmp_path / "mg", settings, json.loads(c.to_json()))
  assert not pretrain_tower.finished(tmp_path / "mg", {**settings, "train_encoders": False})
  assert not pretrain_tower.finished(tmp_path / "mg", settings, json.loads(hr.to_json()))
  record = json.loads((tmp_path / "mg" / "pretrain.json").read_text())
  del record["train_encoders"]  # As written before the argument existed: its default.
  (tmp_path / "mg" / "pretrain.json").write_text(json.dumps(record))
  assert pretrain_tower.finished(tmp_path / "mg", {**settings, "train_encoders": False})
  plain = tiny(data_dir)
  plain.model.tower.vit.depth = 4
  for train_encoders in (False, True):
    workdir = tmp_path / f"plain_{train_encoders}"
    assert _pretrain(plain, workdir, steps=2, batch=8, lr=1e-2, eval_every=2,
                     encoders_from=shared, train_encoders=train_encoders) == {}
    assert json.loads((workdir / "pretrain.json").read_text())["stopped"] == "nothing to train"
    vit_now = mapping.flatten(files.load_params(workdir / files.PARAMS_FILE)["vit"])
    chex.assert_trees_all_equal(vit_now,
                                layout.regroup_blocks(mapping.flatten(source["vit"]), vit_now))
  with pytest.raises(ValueError, match="encoders_from is not set"):
    _pretrain(tiny(data_dir, tower="mini_gemini"), tmp_path / "bad", steps=1, batch=8, lr=1e-3,
              eval_every=1, train_encoders=True)


def test_shared_encoders_name_every_encoder_or_refuse_a_tower_without_one():
  tower = {"encoder_0": {"vit": {"cls": 0}}, "encoder_1": {"convnext": {"stem": 0}},
           "proj": {"kernel": 0}}
  init, frozen = pretrain_tower.shared_encoders(tower, "/f")
  assert init == "tower/encoder_0/vit=/f#vit,tower/encoder_1/convnext=/f#convnext"
  assert frozen == "^tower/(encoder_0/vit|encoder_1/convnext)/"
  with pytest.raises(ValueError, match=r"no encoder named \('vit', 'convnext'\).*\['proj'\]"):
    pretrain_tower.shared_encoders({"proj": {"kernel": 0}}, "/f")


def test_a_probe_of_a_saved_tower_leaves_it_as_it_was(data_dir, pretrained, tmp_path):
  """The whole tower frozen: only the classifier head trains, a linear-probe-like reading."""
  _pretrain(tiny(data_dir), tmp_path, steps=2, batch=8, lr=1e-2, eval_every=2,
            init_params=f"tower={pretrained[0]}", frozen="^tower/")
  chex.assert_trees_all_equal(files.load_params(tmp_path / files.PARAMS_FILE),
                              files.load_params(pretrained[0] / files.PARAMS_FILE))


@pytest.mark.parametrize("setting, message", [
    (dict(frozen="^tower/(vit"), "frozen='\\^tower/\\(vit' is not a regular expression"),
    (dict(frozen="^tower/nothing/"), "freezes no tower parameter"),
    (dict(init_params="llm=/somewhere"), "starts only parts of the tower"),
])
def test_stage_zero_refuses_a_bad_frozen_pattern_or_init(data_dir, tmp_path, setting, message):
  with pytest.raises(ValueError, match=message):
    _pretrain(tiny(data_dir), tmp_path, steps=1, batch=8, lr=1e-3, eval_every=1,
              **setting)
