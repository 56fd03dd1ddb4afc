"""Stage 0: the vision tower pre-trained with a classifier head on the embedded dataset's
questions, on the trainer of the MLLM stages (`mmjax.training.loop`: the same state, optimizer,
freezing, sharding, checkpoints, metrics and resume).

LLaVA starts from a CLIP encoder pre-trained on 400M image-text pairs; nothing can be downloaded
here, and a tower trained from scratch through the LLM's language loss learns only colour
statistics (docs/results: coarse questions stay at the majority answer except the background colour,
over 1,000 steps of batch 32 and three learning rates). This is the stand-in for that
pre-training: the tower, fed exactly the views the MLLM will see (the config's resolution
policy), with a small classifier head that reads every question of the image as its kind and
target words (`questions.condition`) and predicts the answer (`pretrain.kinds`, else
`data.kinds`, restricts the questions, e.g. to one rung of the fine ladder). Only the tower's
parameters are kept: `train.py` runs this stage into WORKDIR/tower when `pretrain.steps > 0` and
starts the MLLM from it; with `train.steps=0` it runs this stage alone.

  python train.py --config configs/default.py --workdir runs/pre --config.train.steps=0
  python train.py --config configs/default.py --workdir runs/default \\
      --config.pretrain.steps=0 --config.train.init_params=tower=runs/pre/tower

Settings: `c.pretrain` (configs/common.py); `loop.pretrain_tower(c, DIR)` runs the stage into DIR
itself.

Writes DIR/params.safetensors (the tower, as `mmjax.convert.files.save_params` names it) and
DIR/pretrain.json (validation accuracy per question kind at every validation pass, and why it
stopped) beside DIR/checkpoints and DIR/metrics.jsonl. With `until`, a tower stops once it has
learned its questions: from scratch, the same number of steps leaves one seed's tower at 0.65
where the others reach 0.97 and 1.0 (docs/results, the three-seed ablation), and the MLLM on the
weak tower stays at chance.
"""
import functools
import json
import pathlib
import re
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmjax import sharding
from mmjax.convert import files
from mmjax.data import pipeline
from mmjax.data.datasets import questions
from mmjax.models import towers
from mmjax.shapes import Array, Float
from mmjax.training import build
from mmjax.training import optim
from mmjax.training import state as state_lib
from mmjax.training import step as step_lib

# The encoders `encoders_from` shares, by their module names inside every tower.
ENCODERS = ("vit", "convnext")

# Learning rate over the steps from (peak, warm-up steps, steps). With `until` the steps are a
# cap rather than the run's length, and a cosine over the cap has halved the rate by the time a
# tower usually starts to read the fine rung (step 75–150 of 200).
SCHEDULES = {
    "cosine": lambda lr, warmup, steps: optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps),
    "constant": lambda lr, warmup, steps: optax.warmup_constant_schedule(0.0, lr, warmup),
}

RECORD = "pretrain.json"

# The settings a record keeps (`c.pretrain`'s fields) and the values of those a record written
# before the field existed ran with.
SETTINGS = ("steps", "batch", "lr", "until", "schedule", "weight_decay", "init_params", "frozen",
            "encoders_from", "train_encoders")
# And the optimizer settings stage 0 shares with the MLLM's stages (`c.train`).
SHARED = ("grad_clip", "adam_eps")
_DEFAULTS = {"until": None, "schedule": "cosine", "weight_decay": 0.05, "init_params": "",
             "frozen": "", "encoders_from": "", "train_encoders": False, "grad_clip": 1.0,
             "adam_eps": 1e-8}


class Pretrainer(nn.Module):
  """The tower and a question-conditioned classifier head over its tokens."""
  tower: towers.TowerConfig
  num_answers: int

  def setup(self):
    self.encoder = towers.tower_for(self.tower)  # Named "tower", as inside the MLLM.
    self.query = nn.Dense(self.tower.width)
    self.hidden = nn.Dense(256)
    self.out = nn.Dense(self.num_answers)

  def head(self, f: Float[Array, "Q N C"], valid: Float[Array, "Q N"],
           cond: Float[Array, "Q K"]) -> Float[Array, "Q A"]:
    """Attention pooling queried by the question, mean and max pooling over the valid tokens.

    No normalisation of the pooled features: with LayerNorms there, a probe stayed at chance on
    the checkerboard colours (benchmarks/dataset_learnability.py)."""
    q = self.query(cond)
    scores = jnp.einsum("qnc,qc->qn", f, q) / np.sqrt(f.shape[-1])
    attn = jax.nn.softmax(jnp.where(valid > 0, scores, -1e9), axis=-1)
    pooled = jnp.einsum("qn,qnc->qc", attn, f)
    mean = jnp.sum(f * valid[..., None], 1) / jnp.maximum(jnp.sum(valid, 1, keepdims=True), 1)
    high = jnp.max(jnp.where(valid[..., None] > 0, f, -1e9), axis=1)
    return self.out(nn.relu(self.hidden(jnp.concatenate([pooled, mean, high, cond], -1))))

  def __call__(self, batch: dict[str, Array]) -> Float[Array, "Q A"]:
    """Logits for every question of `batch` (`_Questions.batch`: the tower's views of B images,
    `valid` Float[B N], and per question its image's row `index` Int[Q] and `cond` Float[Q K])."""
    features = self.encoder(*(batch[k] for k in towers.inputs(self.tower)))
    index = batch["index"]
    return self.head(features[index], batch["valid"][index], batch["cond"])


def classifier_sums(model: nn.Module, params: Any, batch: dict[str, Array]
                    ) -> dict[str, Array]:
  """The summed cross-entropy over the asked questions and their count, as `step.train_step`
  takes a loss (it divides the two: the mean over the batch's asked questions)."""
  logits = model.apply({"params": params}, batch)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return {"loss_sum": jnp.sum(nll * batch["mask"]), "tokens": jnp.sum(batch["mask"])}


class _Questions:
  """One split's images (decoded on demand) and questions as (image, condition, answer, kind),
  of the question `kinds` given (() = every kind); `images` are those with such a question.
  An image the resolution policy refuses (`pipeline.ImageRefused`) has its questions masked out
  and is recorded in `refused`, as the training pipeline drops and counts such rows."""

  def __init__(self, source, policy: Any, num_tokens: int, answers: list[str] | None = None,
               kinds: tuple[str, ...] = (), cache: bool = False):
    self.source, self.policy, self.num_tokens = source, policy, num_tokens
    # Image index → (views, visual tokens), or None when refused; filled as images are first read.
    self.cache: dict[int, Any] | None = {} if cache else None
    self.items = []
    for i in range(len(source)):
      qa = source[i]["qa"]
      for kind, q, a in zip(qa["kind"], qa["question"], qa["answer"]):
        if not kinds or kind.decode() in kinds:
          self.items.append((i, kind.decode(), questions.condition(kind.decode(), q.decode()),
                             a.decode()))
    self.answers = answers or sorted({a for *_, a in self.items})
    self.by_image = [[] for _ in range(len(source))]
    for n, item in enumerate(self.items):
      self.by_image[item[0]].append(n)
    self.images = np.asarray([i for i, q in enumerate(self.by_image) if q])
    if not len(self.images):
      raise ValueError(f"No question of the kinds {list(kinds)} in this split.")
    self.per_image = max(len(q) for q in self.by_image)
    self.refused: set[int] = set()  # Filled from the batch-preparing threads (set.add is atomic).

  def view(self, i: int) -> tuple[dict[str, np.ndarray], int] | None:
    """Image `i`'s views and visual-token count, or None if the policy refuses it."""
    if self.cache is not None and i in self.cache:
      return self.cache[i]
    image = self.source[i]["image"]
    try:
      seen = self.policy(image), pipeline.image_tokens(self.policy, image, self.num_tokens)
    except pipeline.ImageRefused:
      self.refused.add(i)
      seen = None
    if self.cache is not None:
      self.cache[i] = seen
    return seen

  def batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Views of `images` (one row each, under the tower's input names) and all their questions,
    padded to `per_image` each (masked); `kind` (strings) stays on the host."""
    views, valid, index, cond, label, mask, kind = [], [], [], [], [], [], []
    for row, i in enumerate(images):
      seen = self.view(int(i))
      views.append(seen[0] if seen else self.policy.blank())
      n, asked = (seen[1], True) if seen else (0, False)
      valid.append(np.arange(self.num_tokens) < n)
      picked = self.by_image[int(i)]
      for slot in range(self.per_image):
        _, k, c, a = self.items[picked[slot]] if slot < len(picked) else self.items[picked[0]]
        index.append(row)
        cond.append(c)
        label.append(self.answers.index(a) if a in self.answers else -1)
        mask.append(asked and slot < len(picked) and a in self.answers)
        kind.append(k)
    return {**{k: np.stack([v[k] for v in views]) for k in views[0]},
            "valid": np.stack(valid).astype(np.float32), "index": np.asarray(index, np.int32),
            "cond": np.stack(cond), "label": np.maximum(np.asarray(label, np.int32), 0),
            "mask": np.asarray(mask, np.float32), "kind": np.asarray(kind)}


def settings(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings (`c.pretrain`'s, and the optimizer's of `c.train`) that a stage 0 must share
  to be kept or resumed."""
  return {**{k: c.pretrain[k] for k in SETTINGS}, **{k: c.train[k] for k in SHARED}}


def check(c: ml_collections.ConfigDict) -> None:
  """Refuses settings stage 0 cannot run, naming the field and why."""
  p = c.pretrain
  if p.encoders_from and (p.init_params or p.frozen):
    raise ValueError(f"pretrain.encoders_from={p.encoders_from!r} sets pretrain.init_params and "
                     f"pretrain.frozen itself; got also init_params={p.init_params!r}, "
                     f"frozen={p.frozen!r}.")
  if p.train_encoders and not p.encoders_from:
    raise ValueError("pretrain.train_encoders=True trains the encoders started from "
                     "pretrain.encoders_from, and pretrain.encoders_from is not set.")
  if p.schedule not in SCHEDULES:
    raise ValueError(f"pretrain.schedule={p.schedule!r}: valid schedules are "
                     f"{sorted(SCHEDULES)}.")
  if p.until is not None and not 0 <= p.until <= 1:
    raise ValueError(f"pretrain.until={p.until} is not an accuracy in [0, 1].")
  if p.eval_every < 1:
    raise ValueError(f"pretrain.eval_every={p.eval_every} must be positive.")
  for subtree, keys, _ in build.init_params_entries(p.init_params, "pretrain.init_params"):
    if keys[:1] != ("tower",):
      raise ValueError(f"pretrain.init_params entry for {subtree or 'the whole model'!r}: tower "
                       "pre-training starts only parts of the tower ('tower/…').")
  if not c.data.dataset.startswith("fine_detail/"):
    raise ValueError(f"Tower pre-training reads the embedded dataset's question labels; "
                     f"data.dataset={c.data.dataset!r} is not 'fine_detail/<config>'.")


class Setup:
  """What stage 0 trains with, in `directory`: its questions, model, optimizer, state factory,
  compiled step and validation (the `mmjax.training.loop` stage interface)."""

  def __init__(self, c: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               directory: pathlib.Path):
    check(c)
    p = c.pretrain
    self.c, self.mesh, self.directory = c, mesh, pathlib.Path(directory)
    shards = sharding.num_batch_shards(mesh)
    if p.batch % shards:
      raise ValueError(f"pretrain.batch={p.batch} does not split over the mesh's {shards} batch "
                       f"shards (mesh.data × mesh.fsdp).")
    config = build.model_config(c, build.tokenizer(c).vocab_size)
    policy, tokens = build.policy(c, config), config.tower.max_tokens
    kinds = build.question_kinds(c, "pretrain.kinds")
    self.train = _Questions(build.data_source(c, "train"), policy, tokens, kinds=kinds,
                            cache=p.cache_views)
    self.val = _Questions(build.data_source(c, c.data.eval_split), policy, tokens,
                          self.train.answers, kinds, cache=p.cache_views)
    self.model = Pretrainer(config.tower, len(self.train.answers))
    self.stage = build.Stage("tower", 0, p.steps, "classify", "", p.lr)
    self.log_every, self.checkpoint_every = c.train.log_every, p.eval_every
    self.batch_rows = p.batch
    self.max_dropped_share = 1.0  # Stage 0's rows are images, never dropped for length.
    self.hint = "Lower pretrain.lr."
    one = self.device_batch(self.train.batch(self.train.images[:1]))
    self.batch_spec = {k: np.zeros((len(v) * p.batch, *v.shape[1:]), v.dtype)
                       for k, v in one.items()}
    shapes = state_lib.abstract_params(self.model, self.batch_spec)
    init_params, frozen = p.init_params, p.frozen
    self.only_encoders = False
    if p.encoders_from:
      init_params, held = shared_encoders(shapes["tower"], p.encoders_from)
      frozen = "" if p.train_encoders else held
      self.only_encoders = not any(jax.tree.leaves(_trainable(shapes, held)["tower"]))
    self.trainable = _trainable(shapes, frozen)
    self.lr = SCHEDULES[p.schedule](p.lr, min(50, p.steps // 10), p.steps)
    tx = optim.optimizer(shapes, lr=self.lr, weight_decay=p.weight_decay,
                         grad_clip=c.train.grad_clip, trainable=self.trainable,
                         eps=c.train.adam_eps)
    self.factory = state_lib.Factory(self.model, tx, self.batch_spec, mesh)
    self.init_params = build.initial_params(init_params, shapes, "pretrain.init_params")
    self.num_trainable = sum(int(np.prod(x.shape)) for x, t in zip(
        jax.tree.leaves(shapes), jax.tree.leaves(self.trainable)) if t)
    self.num_params = state_lib.count(shapes)
    self.step_fn = jax.jit(
        lambda state, batch: step_lib.train_step(state, batch, model=self.model, tx=tx,
                                                 trainable=self.trainable,
                                                 sums=classifier_sums),
        in_shardings=(self.factory.shardings, sharding.data_sharding(mesh)),
        out_shardings=(self.factory.shardings, None), donate_argnums=0)
    self._predict = jax.jit(lambda params, b: jnp.argmax(
        self.model.apply({"params": params}, b), -1))
    rng = np.random.default_rng(c.seed)
    picks = [rng.choice(self.train.images, p.batch, replace=False) for _ in range(p.steps)]
    # Threads ahead of the step: PIL's decoding and resizing release the GIL, and they are what
    # bounds a fast accelerator. Grain keeps the batches in order, and its iterator's position
    # is checkpointed with the state.
    self.loader = grain.MapDataset.source(picks).map(self.train.batch).to_iter_dataset(
        grain.ReadOptions(num_threads=p.workers, prefetch_buffer_size=2 * p.workers))
    self.curve: list[dict[str, Any]] = []

  @functools.cached_property
  def iterator(self):
    return iter(self.loader)

  def compile(self):
    return step_lib.compile_ahead(self.step_fn, self.factory.abstract, self.batch_spec,
                                  self.mesh)

  @staticmethod
  def device_batch(host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in host.items() if k != "kind"}

  @staticmethod
  def counts(host: dict[str, np.ndarray]) -> tuple[float, int, int, int]:
    """(visual tokens, images refused, rows truncated, rows of too many images) of a batch, for
    the metrics (one image a row here: the last two are 0)."""
    return float(np.sum(host["valid"])), int(np.sum(~np.any(host["valid"] > 0, axis=1))), 0, 0

  def start(self) -> None:
    """Records the stage's settings before its first step: a run stopped before its first
    validation pass (SIGTERM) resumes from its checkpoint against this record."""
    self.write(None, None)

  def resume(self, step: int) -> None:
    """Checks that a stage 0 resumed at `step` ran with these settings, and takes its curve and
    the training images found refused so far."""
    record = self.directory / RECORD
    done = json.loads(record.read_text()) if record.exists() else {}
    if not done:
      raise ValueError(f"{self.directory} holds stage 0 checkpoints but no {RECORD}: not a "
                       "stage 0 of mmjax, or its record was removed; use a new --workdir.")
    if not _same(done, settings(self.c), json.loads(self.c.to_json())):
      raise ValueError(f"{self.directory} holds a stage 0 of other settings or another model "
                       f"(see its {RECORD}); use a new --workdir, or restore those settings.")
    self.curve = [row for row in done["curve"] if row["step"] <= step]
    self.train.refused.update(done.get("refused_train", []))

  def evaluates(self, step: int) -> bool:
    return step % self.checkpoint_every == 0 or step == self.stage.end

  def evaluate(self, step: int, state: state_lib.TrainState, loss: float, preempted: bool
               ) -> tuple[dict[str, float], bool]:
    """At a validation step (under SIGTERM too: the record must hold the step's pass before its
    checkpoint does): the validation accuracy per question kind, as metrics `accuracy/KIND`,
    and whether the stage ends here (`until` reached, or its last step); the tower and the
    record are written."""
    del preempted
    if not self.evaluates(step):
      return {}, False
    right: dict[str, list[bool]] = {}
    batch = self.c.pretrain.batch
    with jax.set_mesh(self.mesh), sharding.axis_rules():
      for s in range(0, len(self.val.images), batch):
        b = self.val.batch(self.val.images[s:s + batch])
        hits = np.asarray(self._predict(state.params, self.device_batch(b))) == b["label"]
        for k, h, m in zip(b["kind"], hits, b["mask"]):
          if m:
            right.setdefault(str(k), []).append(bool(h))
    if not right:
      raise ValueError(f"No {self.c.data.eval_split} question could be asked: the resolution "
                       f"policy refused all {len(self.val.refused)} images.")
    accuracy = {k: float(np.mean(v)) for k, v in sorted(right.items())}
    until = self.c.pretrain.until
    learned = until is not None and min(accuracy.values()) >= until
    self.curve.append({"step": step, "loss": loss, **accuracy})
    stopped = "until" if learned else "steps" if step == self.stage.end else None
    self.write(jax.tree.map(np.asarray, state.params["tower"]), stopped)
    return {f"accuracy/{k}": v for k, v in accuracy.items()}, stopped is not None

  def write(self, tower: Any | None, stopped: str | None) -> None:
    """The tower's parameters (unless None) and the record (`stopped` only once the stage has
    ended)."""
    if jax.process_index():
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    if tower is not None:
      files.save_params(self.directory / files.PARAMS_FILE, tower)
    (self.directory / RECORD).write_text(json.dumps(
        {"config": json.loads(self.c.to_json()), **settings(self.c), "stopped": stopped,
         "answers": self.train.answers,
         # Images the resolution policy refused (their questions left out), per split (of the
         # training split: those read so far).
         "refused_images": {"train": len(self.train.refused),
                            self.c.data.eval_split: len(self.val.refused)},
         "refused_train": sorted(self.train.refused),
         "curve": self.curve}, indent=1))

  def write_loaded(self) -> None:
    """A tower that is nothing but its `encoders_from` (LLaVA-1.5's ViT, whose own tower's
    pre-training already trained it on these questions): written as loaded, nothing trains."""
    # Every tower parameter is an encoder's, so `init_params` holds the whole tower.
    self.write(self.init_params["tower"], "nothing to train")


def _same(done: dict[str, Any], now: dict[str, Any], config: dict[str, Any]) -> bool:
  """Whether a record `done` has the settings `now` and, as `config` (a config as JSON), the
  same model, data, seed and pre-training question kinds."""
  return (all(done.get(k, _DEFAULTS.get(k)) == v for k, v in now.items())
          and all(done["config"].get(k) == config[k] for k in ("model", "data", "seed"))
          and _kinds(done["config"]) == _kinds(config))


def finished(workdir: str | pathlib.Path, now: dict[str, Any],
             config: dict[str, Any] | None = None) -> bool:
  """Whether `workdir` holds a stage 0 that has ended with the settings `now` (`settings(c)`, or
  some of them) and, given `config` (a config as JSON), of the same model, data, seed and
  pre-training question kinds: train.py and the ablation harness keep such a tower rather than
  train it again."""
  record = pathlib.Path(workdir) / RECORD
  done = json.loads(record.read_text()) if record.exists() else {}
  if not done.get("stopped"):
    return False
  return all(done.get(k, _DEFAULTS.get(k)) == v for k, v in now.items()) and (
      config is None or _same(done, {}, config))


def _kinds(config: dict[str, Any]) -> str:
  """A config's (as JSON) `pretrain.kinds`, "" in a record written before the field existed."""
  return config["pretrain"].get("kinds", "")


def shared_encoders(tower: dict[str, Any], path: str) -> tuple[str, str]:
  """(`init_params`, `frozen`) that start every ViT and ConvNeXt inside `tower` (its parameter
  tree) from the tower file `path`'s `vit` and `convnext` and hold them fixed: the encoders
  pre-trained once and shared by every fusion, as LLaVA-HR, Mini-Gemini and EAGLE all start
  from the same CLIP ViT and ConvNeXt."""
  found = []

  def walk(tree: dict[str, Any], prefix: tuple[str, ...]) -> None:
    for key, value in tree.items():
      if isinstance(value, dict) and key in ENCODERS:
        found.append((prefix + (key,), key))
      elif isinstance(value, dict):
        walk(value, prefix + (key,))

  walk(tower, ())
  if not found:
    raise ValueError(f"pretrain.encoders_from={path!r}: the tower has no encoder named "
                     f"{ENCODERS} to start from it (its parts: {sorted(tower)}).")
  init = ",".join(f"tower/{'/'.join(p)}={path}#{name}" for p, name in found)
  return init, "^tower/(" + "|".join(re.escape("/".join(p)) for p, _ in found) + ")/"


def _trainable(params: Any, frozen: str) -> Any:
  """False for the tower parameters whose path (from `tower/`) matches `frozen`, else True
  (the head always trains: a pattern freezing the whole tower makes a probe of it); a pattern
  that is not a regular expression, or freezes no tower parameter, is a ValueError."""
  try:
    regex = re.compile(frozen) if frozen else None
  except re.error as e:
    raise ValueError(f"pretrain.frozen={frozen!r} is not a regular expression: {e}.") from None
  names = optim.path_names(params)
  mask = {k: jax.tree.map(lambda n: not (k == "tower" and regex and regex.search(n)), v)
          for k, v in names.items()}
  if regex and all(jax.tree.leaves(mask["tower"])):
    raise ValueError(f"pretrain.frozen={frozen!r} freezes no tower parameter; paths look like "
                     f"{jax.tree.leaves(names['tower'])[:6]}.")
  return mask
