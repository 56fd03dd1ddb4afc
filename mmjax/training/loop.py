"""The training loop behind `train.py`: stages, sharded steps, checkpoints, metrics, resume.

Re-running the same command resumes from the newest checkpoint in the workdir — model,
optimizer, step and data iterator — so a preempted or killed run continues exactly where its
last checkpoint left it. SIGTERM (preemption) saves a checkpoint before exiting; a non-finite
loss stops the run with the last good checkpoint kept.
"""
import dataclasses
import functools
import json
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mmjax import console
from mmjax import errors
from mmjax import evaluators as evaluators_lib
from mmjax import sharding
from mmjax.convert import files as param_files
from mmjax.data import pipeline
from mmjax.models import mllm
from mmjax.training import build
from mmjax.training import checkpoint as checkpoint_lib
from mmjax.training import flops as flops_lib
from mmjax.training import metrics as metrics_lib
from mmjax.training import optim
from mmjax.training import pretrain_tower as pretrain_tower_lib
from mmjax.training import state as state_lib
from mmjax.training import step as step_lib
from mmjax.training import validate

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports a process it terminated.


# Rows of each stage's data formatted before the run starts, to check they fit data.max_len;
# the loop checks the share over every logged window once it has seen this many.
PROBE_ROWS = 8
MIN_ROWS_FOR_SHARE = 64


class NonFiniteLossError(errors.Error, RuntimeError):
  """The loss became NaN or infinite; the run stopped without saving that state."""


class NoCheckpointRestores(errors.Error, RuntimeError):
  """Every checkpoint of the workdir failed to restore (each was moved aside)."""


class TooManyDropped(errors.Error, RuntimeError):
  """More rows than `train.max_dropped_share` were longer than data.max_len."""


class Preempted(SystemExit):
  """SIGTERM arrived; a checkpoint was written and the run stopped."""


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps (a save mid-step is impossible)."""

  def __init__(self):
    self.raised = False
    self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def restore(self):
    signal.signal(signal.SIGTERM, self.previous)


def mesh_from_config(c: ml_collections.ConfigDict):
  """The config's mesh (`validate.mesh`; the batches are checked where a run starts)."""
  return validate.mesh(c, batches=())


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What `prepare` checked and built for a run; nothing of it is written anywhere."""
  mesh: jax.sharding.Mesh
  tok: Any  # The tokenizer (mmjax.data.tokenizer).
  config: mllm.MLLMConfig
  stages: list[build.Stage]


def prepare(c: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> Prepared:
  """Checks a run before any work and writes nothing: `c`'s values, mesh and batch split, the
  workdir, the saved config of a run being resumed (model and text/image formatting), the model,
  stages, question kinds, evaluators and parameter files, and that each stage's first rows fit
  data.max_len. Raises an `errors.Error` naming the field. (The embedded dataset and a BPE
  vocabulary are generated if absent: caches beside the dataset, not the run's files.)"""
  workdir = pathlib.Path(workdir)
  validate.config(c)
  with errors.expected():  # The config alone: no data, no devices.
    all_stages = build.stages(c)
    for field in ("data.kinds", "pretrain.kinds"):  # An unknown kind fails now, not at its stage.
      build.question_kinds(c, field)
    evaluators_lib.check(c)
    if c.pretrain.steps:
      pretrain_tower_lib.check(c)
  mesh = validate.mesh(c)
  validate.workdir(workdir)
  saved = validate.saved_config(workdir) if validate.checkpoint_steps(workdir) else None
  fields = ("model",) + validate.FORMAT_FIELDS
  todo = "train in a new --workdir, or resume with the run's config"
  if saved is not None:
    validate.same_run(c, workdir, saved, fields, "resuming", todo)
  with errors.expected():  # A BPE tokenizer is learned from the data on first use.
    tok = build.tokenizer(c)
    config = build.model_config(c, tok.vocab_size)
  for field in ("train.init_params",) + ("pretrain.init_params",) * bool(c.pretrain.steps):
    with errors.expected():
      entries = build.init_params_entries(validate.field_value(c, field), field)
    for subtree, _, path in entries:
      path = pathlib.Path(path.partition("#")[0])
      param_files.check_params(path / param_files.PARAMS_FILE if path.is_dir() else path,
                               f"{field} {subtree}=")
  if saved is not None:
    validate.same_vocabulary(c, workdir, saved, tok.fingerprint(), "resuming", todo)
  _rows_fit(c, config, tok, all_stages)
  return Prepared(mesh, tok, config, all_stages)


def _rows_fit(c: ml_collections.ConfigDict, config: mllm.MLLMConfig, tok: Any,
              all_stages: list[build.Stage]) -> None:
  """Rows leave room for text beside the visual tokens, and each stage's first `PROBE_ROWS`
  rows are dropped as too long at most `train.max_dropped_share` of the time."""
  length = build.max_len(c, config)
  field = "data.max_len" if c.data.max_len else "data.text_len"
  value = c.data.max_len or c.data.text_len
  if length <= config.max_visual_tokens:
    raise errors.ConfigError(errors.message(
        f"{field}={value}", f"rows of {length} tokens leave no room for text beside the model's "
        f"{config.max_visual_tokens} visual tokens", f"raise --config.{field}"))
  if not all_stages:
    return
  with errors.expected():
    source = build.data_source(c, "train")
  n = min(PROBE_ROWS, len(source))
  for task in sorted({stage.task for stage in all_stages}):
    fmt = build.formatter(c, task, config, tok)
    rng = np.random.default_rng(c.seed)
    dropped = sum(int(fmt.random_map(source[i], rng)["dropped"]) for i in range(n))
    if dropped > c.train.max_dropped_share * n:
      raise errors.ConfigError(errors.message(
          f"{field}={value}", f"{dropped} of the first {n} rows of the {task!r} task are longer "
          f"than {length} tokens and would be dropped (over train.max_dropped_share="
          f"{c.train.max_dropped_share})", f"raise --config.{field}"))


def train(c: ml_collections.ConfigDict, workdir: str | pathlib.Path,
          prepared: Prepared | None = None) -> dict[str, Any]:
  """Trains `c` in `workdir` (resuming if it holds checkpoints); returns the last metrics.
  `prepared`: `prepare(c, workdir)`'s result, if the caller checked the run already.

  A newest checkpoint that does not restore is moved aside with a one-line warning and the run
  resumes from the newest one that does; with none left, a `NoCheckpointRestores` error."""
  prepared = prepared or prepare(c, workdir)
  return _falling_back(functools.partial(_train, prepared=prepared), c, workdir)


def pretrain_tower(c: ml_collections.ConfigDict, directory: str | pathlib.Path) -> dict[str, Any]:
  """Stage 0 alone (`mmjax.training.pretrain_tower`): the tower pre-trained into `directory`
  (resuming as `train` does); returns its last validation accuracy per question kind ({} when
  nothing trains or a finished one is kept)."""
  validate.config(c)
  with errors.expected():
    pretrain_tower_lib.check(c)
  validate.mesh(c, batches=("pretrain",))
  validate.workdir(directory)
  return _falling_back(_pretrain_tower, c, directory)


def _falling_back(run, c: ml_collections.ConfigDict, workdir: str | pathlib.Path):
  skipped = []
  while True:
    try:
      return run(c, workdir)
    except checkpoint_lib.UnreadableCheckpoint as e:
      checkpoints = checkpoint_lib.Checkpointer(e.directory)
      moved = checkpoints.move_aside(e.step)
      skipped.append(e.step)
      left = checkpoints.all_steps()
      checkpoints.close()
      logging.warning("%s Moved it to %s; resuming from the newest checkpoint before it.", e,
                      moved)
      if not left:
        raise NoCheckpointRestores(_none_restores(checkpoints, skipped)) from None


def _none_restores(checkpoints: checkpoint_lib.Checkpointer, skipped: list[int]) -> str:
  return (f"No checkpoint of {checkpoints.directory} restores (steps {skipped or 'earlier'} are in "
          f"{checkpoints.aside}); move one back once repaired, or train in a new --workdir.")


def _open(directory: pathlib.Path, keep: int) -> tuple[checkpoint_lib.Checkpointer, int]:
  """The checkpoints of `directory` and the newest step (0: none); a directory whose
  checkpoints were all moved aside as damaged refuses to start over (that would hide it)."""
  checkpoints = checkpoint_lib.Checkpointer(directory, keep)
  start = checkpoints.latest_step() or 0
  if not start and checkpoints.aside.is_dir() and any(checkpoints.aside.iterdir()):
    checkpoints.close()
    raise NoCheckpointRestores(_none_restores(checkpoints, []))
  return checkpoints, start


def _train(c: ml_collections.ConfigDict, workdir: str | pathlib.Path, prepared: Prepared
           ) -> dict[str, Any]:
  workdir = pathlib.Path(workdir)
  mesh, tok, config, all_stages = (prepared.mesh, prepared.tok, prepared.config,
                                   prepared.stages)
  model = mllm.MLLM(config)
  _record_config(c, workdir, tok)
  checkpoints, start = _open(workdir / "checkpoints", c.train.keep_checkpoints)
  if start >= c.train.steps and all_stages:
    checkpoints.close()
    console.say("Already trained %d steps in %s.", start, workdir)
    return {}
  if c.pretrain.steps and start == 0:  # A resumed run's checkpoints hold the tower.
    try:
      c = _with_pretrained_tower(c, workdir / "tower")
    except BaseException:
      checkpoints.close()
      raise
  if not all_stages:  # train.steps=0: stage 0 alone.
    checkpoints.close()
    return {}
  try:  # Built now: a bad evaluator setting fails before any step.
    during = evaluators_lib.build(evaluators_lib.Context(c, model, config, tok, mesh),
                                  during_training=True)
  except BaseException:
    checkpoints.close()
    raise
  writer = metrics_lib.MetricsWriter(workdir, c.train.steps, start)
  peak = flops_lib.measured_peak_flops() * jax.device_count()
  sigterm = _SigtermFlag()
  source = build.data_source(c, "train")
  rng = jax.random.key(c.seed)
  state, last = None, {}
  try:
    for n, stage in enumerate(all_stages):
      if start >= stage.end:
        continue
      setup = _Setup(c, stage, model, config, tok, source, mesh, during)
      if start > stage.start:  # Resuming inside this stage: everything from the checkpoint.
        state = checkpoints.restore(start, setup.factory.abstract, setup.factory.shardings,
                                    setup.iterator)
        console.say("Resumed stage %s at step %d.", stage.name, start)
      else:
        if state is None and start > 0:  # Resuming at the boundary: the last stage's params.
          before = _Setup(c, all_stages[n - 1], model, config, tok, source, mesh)
          state = checkpoints.restore(start, before.factory.abstract, before.factory.shardings)
          console.say("Resumed stage %s at step %d (its start).", stage.name, start)
        params = (state.params if state is not None
                  else build.initial_params(c.train.init_params,
                                            setup.factory.abstract.params))
        state = setup.factory.create(rng, params, stage.start)
      state, last, _ = _run(setup, state, checkpoints, writer, peak, sigterm)
      start = stage.end
  finally:
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    sigterm.restore()
  return last


def _with_pretrained_tower(c: ml_collections.ConfigDict,
                           directory: pathlib.Path) -> ml_collections.ConfigDict:
  """Stage 0 into `directory` (kept when a finished one of the same model, data, seed and
  settings is there; one stopped midway resumes); returns `c` with the tower added to
  `train.init_params`."""
  if any(keys[:1] in (("tower",), ()) for _, keys, _ in
         build.init_params_entries(c.train.init_params)):
    raise ValueError(f"pretrain.steps={c.pretrain.steps} pre-trains the tower, and "
                     f"train.init_params={c.train.init_params!r} also sets it: set "
                     f"pretrain.steps=0 to start from those parameters.")
  _pretrain_tower(c, directory)
  c = c.copy_and_resolve_references()
  with c.unlocked():
    c.train.init_params = ",".join(filter(None, (f"tower={directory}", c.train.init_params)))
  return c


def _pretrain_tower(c: ml_collections.ConfigDict, directory: str | pathlib.Path
                    ) -> dict[str, Any]:
  directory = pathlib.Path(directory)
  if jax.process_count() > 1:
    raise ValueError("Tower pre-training (pretrain.steps > 0) runs in one process: run it alone "
                     "in one process first (train.steps=0), then pass its tower directory as "
                     "train.init_params=tower=DIR with pretrain.steps=0.")
  # Through JSON, as pretrain.json records the config.
  if pretrain_tower_lib.finished(directory, pretrain_tower_lib.settings(c),
                                 json.loads(c.to_json())):
    console.say("Stage tower: pre-trained in %s, kept.", directory)
    return {}
  setup = pretrain_tower_lib.Setup(c, mesh_from_config(c), directory)
  if setup.only_encoders:
    setup.write_loaded()
    console.say("Stage tower: the tower is its shared encoders, written to %s as loaded.",
                directory)
    return {}
  checkpoints, start = _open(directory / "checkpoints", c.train.keep_checkpoints)
  writer = None
  sigterm = _SigtermFlag()
  try:
    if start:
      setup.resume(start)
      state = checkpoints.restore(start, setup.factory.abstract, setup.factory.shardings,
                                  setup.iterator)
      console.say("Resumed stage tower at step %d.", start)
    else:
      setup.start()
      state = setup.factory.create(jax.random.key(c.seed), setup.init_params, 0)
    writer = metrics_lib.MetricsWriter(directory, c.pretrain.steps, start)
    peak = flops_lib.measured_peak_flops() * jax.device_count()
    _, last, _ = _run(setup, state, checkpoints, writer, peak, sigterm)
  finally:
    checkpoints.wait()
    checkpoints.close()
    if writer:
      writer.close()
    sigterm.restore()
  return {k: v for k, v in setup.curve[-1].items() if k not in ("step", "loss")}


def _record_config(c: ml_collections.ConfigDict, workdir: pathlib.Path, tok: Any) -> None:
  """Writes `workdir/config.json` (after `prepare` compared a resumed run's): the config, and
  under "derived" what it does not say itself (the tokenizer's vocabulary fingerprint)."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    record = {**validate.as_json(c), "derived": {"tokenizer": tok.fingerprint(),
                                                  "vocab_size": tok.vocab_size}}
    (workdir / validate.CONFIG_FILE).write_text(json.dumps(record, indent=1))


class _Setup:
  """What one MLLM stage trains with: its data, optimizer, state factory and compiled step.

  The stage interface `_run` drives (stage 0's is `pretrain_tower.Setup`): `stage`, `mesh`,
  `factory`, `lr`, `iterator`, `compile()`, `device_batch(host)`, `counts(host)`,
  `batch_rows`, `log_every`, `checkpoint_every`, `num_trainable`, `num_params`, `hint` (advice
  on a non-finite loss), `evaluates(step)` and `evaluate(step, state, loss, preempted)`."""

  def __init__(self, c, stage, model, config, tok, source, mesh, evaluators=None):
    self.c, self.stage, self.mesh = c, stage, mesh
    # The evaluators that run during training (`evaluators.build(…, during_training=True)`),
    # built once for every stage.
    self.evaluators = evaluators or {}
    self.log_every, self.checkpoint_every = c.train.log_every, c.train.checkpoint_every
    self.batch_rows = c.train.batch_size
    self.max_dropped_share = c.train.max_dropped_share
    self.hint = "Lower train.lr or raise train.warmup_fraction."
    fmt = build.formatter(c, stage.task, config, tok)
    self.batch_spec = step_lib.model_batch(build.example_batch(fmt, source,
                                                               c.train.batch_size))
    params_shape = state_lib.abstract_params(model, self.batch_spec)
    warmup = int(stage.steps * c.train.warmup_fraction)
    self.lr = optim.schedule(stage.lr, warmup, stage.steps)
    tx = optim.optimizer(params_shape, lr=self.lr, weight_decay=c.train.weight_decay,
                         grad_clip=c.train.grad_clip, trainable=stage.trainable,
                         eps=c.train.adam_eps)
    self.factory = state_lib.Factory(model, tx, self.batch_spec, mesh)
    self.trainable = optim.trainable_mask(params_shape, stage.trainable)
    self.num_trainable = sum(int(np.prod(p.shape)) for p, t in zip(
        jax.tree.leaves(params_shape), jax.tree.leaves(self.trainable)) if t)
    self.num_params = state_lib.count(params_shape)
    self.loader = pipeline.make_loader(source, fmt, global_batch_size=c.train.batch_size,
                                       seed=c.seed + stage.start,
                                       worker_count=c.data.worker_count)
    self.step_fn = jax.jit(
        functools.partial(step_lib.train_step, model=model, tx=tx,
                          accum_steps=c.train.grad_accum_steps, trainable=self.trainable),
        in_shardings=(self.factory.shardings, sharding.data_sharding(mesh)),
        out_shardings=(self.factory.shardings, None), donate_argnums=0)

  @functools.cached_property
  def iterator(self):
    """Created on first use: a setup only restored from (a stage boundary) reads no data."""
    return iter(self.loader)

  @staticmethod
  def device_batch(host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return step_lib.model_batch(host)  # The bookkeeping fields stay on the host.

  @staticmethod
  def counts(host: dict[str, np.ndarray]) -> tuple[float, int, int, int]:
    """(tokens, rows dropped, rows truncated, rows of more images than a row holds — dropped
    too) of this process's rows, for the metrics."""
    return (float(np.sum(host["segment_ids"] > 0)), int(np.sum(host["dropped"])),
            int(np.sum(host["truncated"])), int(np.sum(host.get("too_many_images", 0))))

  def evaluates(self, step: int) -> bool:
    return any(step % every == 0 for _, every in self.evaluators.values())

  def evaluate(self, step: int, state: state_lib.TrainState, loss: float, preempted: bool
               ) -> tuple[dict[str, float], bool]:
    """The evaluators due at `step` on the state's parameters, as metrics `NAME/metric` (none
    under SIGTERM: the checkpoint comes first); the MLLM's stages never end early."""
    del loss
    out = {}
    if preempted:
      return out, False
    with jax.set_mesh(self.mesh), sharding.axis_rules():
      for name, (evaluator, every) in self.evaluators.items():
        if step % every == 0:
          out.update(evaluators_lib.scalars(name, evaluator.run(state.params)))
    return out, False

  def compile(self):
    """The step compiled ahead of time for the global batch (`batch_spec` has global rows)."""
    return step_lib.compile_ahead(self.step_fn, self.factory.abstract, self.batch_spec,
                                  self.mesh)


class _Window:
  """The steps since the last logged one: their device metrics (fetched together), host counts
  and wall time."""

  def __init__(self):
    self.start = time.perf_counter()
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.steps, self.tokens, self.dropped, self.truncated, self.too_many_images = 0, 0.0, 0, 0, 0
    self.seconds = 0.0

  def add(self, step: int, metrics: dict[str, jax.Array], counts: tuple[float, int, int, int]
          ) -> None:
    """Step `step`'s device metrics and its batch's (tokens, dropped, truncated,
    too_many_images) counts."""
    self.pending.append((step, {k: metrics[k] for k in ("loss", "grad_norm", "finite")}))
    self.steps += 1
    self.tokens += counts[0] * jax.process_count()
    self.dropped += counts[1]
    self.truncated += counts[2]
    self.too_many_images += counts[3]

  def fetch(self) -> list[dict[str, Any]]:
    """The pending steps' metrics as host values, in step order (waits for the device)."""
    values = jax.device_get([m for _, m in self.pending])
    self.seconds = time.perf_counter() - self.start
    out = [{"step": step, "loss": float(v["loss"]), "grad_norm": float(v["grad_norm"]),
            "finite": bool(v["finite"])} for (step, _), v in zip(self.pending, values)]
    self.pending = []
    return out


def _run(setup, state, checkpoints, writer, peak, sigterm):
  """Trains `setup`'s stage from `state` to its end, or until its `evaluate` ends it; returns
  the state, the last logged metrics and whether `evaluate` ended it."""
  stage = setup.stage
  compiled = setup.compile()
  step_flops = flops_lib.compiled_flops(compiled)
  console.say("Stage %s: steps %d-%d, task %s, %d of %d parameters train, %.3g FLOPs/step.",
               stage.name, stage.start, stage.end, stage.task, setup.num_trainable,
               setup.num_params, step_flops)
  # The loop never waits for the device between steps: each step is dispatched while the last
  # one runs (the next batch is read and copied meanwhile), and the step's metrics stay on the
  # device until a logging or checkpoint step fetches the window's at once. The non-finite guard
  # is checked there, before any save, so no checkpoint ever holds a non-finite state.
  window = _Window()
  last = {}
  step = int(state.step)
  rows_seen, rows_dropped = 0, 0  # This process's, for train.max_dropped_share.
  previous = None
  while step < stage.end:
    host = next(setup.iterator)
    state, m = compiled(state, pipeline.to_global(setup.device_batch(host), setup.mesh))
    if previous is not None:  # At most one step queued behind the running one (memory, SIGTERM).
      jax.block_until_ready(previous)
    previous = m["loss"]
    step += 1
    window.add(step, m, setup.counts(host))
    writer.advance()
    log = step % setup.log_every == 0 or step == stage.end
    save = sigterm.raised or step % setup.checkpoint_every == 0 or step == stage.end
    if not (log or save or setup.evaluates(step)):
      continue
    fetched = window.fetch()  # The one wait for the device: the whole window's metrics.
    rows_seen += window.steps * setup.batch_rows // jax.process_count()
    rows_dropped += window.dropped
    if rows_seen >= MIN_ROWS_FOR_SHARE and rows_dropped > setup.max_dropped_share * rows_seen:
      raise TooManyDropped(errors.message(
          f"data.max_len={setup.c.data.max_len}", f"{rows_dropped} of {rows_seen} rows so far "
          f"were longer than the row length and dropped (over train.max_dropped_share="
          f"{setup.max_dropped_share}); the last checkpoint is step "
          f"{checkpoints.latest_step()}", "raise --config.data.max_len (or data.text_len)"))
    bad = next((r for r in fetched if not r["finite"]), None)
    if bad is not None:
      raise NonFiniteLossError(errors.message(
          f"loss {bad['loss']}, gradient norm {bad['grad_norm']} at step {bad['step']} (stage "
          f"{stage.name})", "not finite, or the update overflowed the parameters: stopped without "
          f"saving this state (the last good checkpoint is step {checkpoints.latest_step()} in "
          f"{checkpoints.directory})", setup.hint))
    evaluated, ended = setup.evaluate(step, state, fetched[-1]["loss"], sigterm.raised)
    if log or evaluated:
      seconds = window.seconds / window.steps
      last = {
          "stage": stage.name, "loss": fetched[-1]["loss"],
          "lr": float(setup.lr(step - 1 - stage.start)), "grad_norm": fetched[-1]["grad_norm"],
          # The loop's wall time per step since the last logged step: data and all.
          "step_time": seconds, "tokens_per_sec": window.tokens / window.seconds,
          "examples_per_sec": setup.batch_rows / seconds,
          "mfu": step_flops / seconds / peak if step_flops else 0.0,
          "dropped": window.dropped, "truncated": window.truncated,
          "too_many_images": window.too_many_images, **evaluated,
      }
      writer.write(step, last)
    if save or ended:
      checkpoints.save(state, setup.iterator)
      if sigterm.raised:
        checkpoints.wait()
        logging.warning("SIGTERM: saved a checkpoint at step %d; exiting.", step)
        raise Preempted(PREEMPTED_EXIT_CODE)
    if ended:
      return state, last, True
    if log or evaluated:
      window = _Window()  # After the save: its time is not the next window's.
  return state, last, False
