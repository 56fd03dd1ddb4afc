"""Supervised pre-training of a config's vision tower on the embedded dataset's questions.

LLaVA starts from a CLIP encoder pre-trained on 400M image-text pairs; nothing can be downloaded
here, and a tower trained from scratch through the LLM's language loss learns only colour
statistics (docs/results: coarse questions stay at the majority answer except the background colour,
over 1,000 steps of batch 32 and three learning rates). This is the stand-in for that
pre-training: the tower, fed exactly the views the MLLM will see (the config's resolution
policy), with a small classifier head that reads every question of the image as its kind and
target words (`questions.condition`) and predicts the answer (`pretrain.kinds`, else
`data.kinds`, restricts the questions, e.g. to one rung of the fine ladder). Only the tower's
parameters are kept: `train.py --config.train.init_params=tower=WORKDIR` starts the MLLM from them.

  python -m mmjax.training.pretrain_tower --config configs/default.py --workdir runs/pre
  python train.py --config configs/default.py --workdir runs/default \\
      --config.train.init_params=tower=runs/pre

Writes WORKDIR/params.safetensors (the tower, as `mmjax.convert.files.save_params` names it) and
WORKDIR/pretrain.json (validation accuracy per question kind along the way, and why it stopped).
With `--until`, a tower stops once it has learned its questions: from scratch, the same number
of steps leaves one seed's tower at 0.65 where the others reach 0.97 and 1.0 (docs/results, the
three-seed ablation), and the MLLM on the weak tower stays at chance.
"""
import inspect
import json
import pathlib
import re
import time
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from jaxtyping import Array, Float, Int
from ml_collections import config_flags

from mmjax.convert import files
from mmjax.data import pipeline
from mmjax.data.datasets import questions
from mmjax.models import towers
from mmjax.training import build
from mmjax.training import optim
from mmjax.training import state

# The encoders `encoders_from` shares, by their module names inside every tower.
ENCODERS = ("vit", "convnext")

# Learning rate over the steps from (peak, warm-up steps, steps). With `until` the steps are a
# cap rather than the run's length, and a cosine over the cap has halved the rate by the time a
# tower usually starts to read the fine rung (step 75–150 of 200).
SCHEDULES = {
    "cosine": lambda lr, warmup, steps: optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps),
    "constant": lambda lr, warmup, steps: optax.warmup_constant_schedule(0.0, lr, warmup),
}


class Pretrainer(nn.Module):
  """The tower and a question-conditioned classifier head over its tokens."""
  tower: towers.TowerConfig
  num_answers: int

  def setup(self):
    self.encoder = towers.tower_for(self.tower)  # Named "tower", as inside the MLLM.
    self.query = nn.Dense(self.tower.width)
    self.hidden = nn.Dense(256)
    self.out = nn.Dense(self.num_answers)

  def features(self, views: dict[str, Array]) -> Float[Array, "B N C"]:
    return self.encoder(*(views[k] for k in towers.inputs(self.tower)))

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

  def __call__(self, views: dict[str, Array], valid: Float[Array, "B N"],
               image_index: Int[Array, "Q"], cond: Float[Array, "Q K"]) -> Float[Array, "Q A"]:
    """Logits for every question (its image's row in the batch, its condition)."""
    return self.head(self.features(views)[image_index], valid[image_index], cond)


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
    """Views of `images` and all their questions, padded to `per_image` each (masked)."""
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
    return {"views": {k: np.stack([v[k] for v in views]) for k in views[0]},
            "valid": np.stack(valid).astype(np.float32), "index": np.asarray(index, np.int32),
            "cond": np.stack(cond), "label": np.maximum(np.asarray(label, np.int32), 0),
            "mask": np.asarray(mask, np.float32), "kind": np.asarray(kind)}


def pretrain(c: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, steps: int,
             batch: int, lr: float, eval_every: int, workers: int = 0,
             until: float | None = None, cache_views: bool = False, init_params: str = "",
             frozen: str = "", schedule: str = "cosine", encoders_from: str = "",
             train_encoders: bool = False) -> dict[str, Any]:
  """Pre-trains `c`'s tower for `steps`, or until every kind's validation accuracy reaches
  `until`; returns the last validation accuracy per kind. The tower's parameters and the curve
  are written to `workdir` at every validation pass, so a run killed midway keeps its last one;
  pretrain.json's `stopped` ("steps" or "until") is set only when the run has ended; a tower
  that is nothing but its `encoders_from` is written as loaded ("nothing to train").

  `init_params` ("tower/…=PATH[#INNER],…", as `train.init_params`) starts parts of the tower from
  saved parameters, and the tower parameters whose '/'-path matches the regular expression
  `frozen` do not train: encoders pre-trained alone, then only a fusion trained on top of them
  (LLaVA-HR's adapters, Mini-Gemini's mining), as the papers start from CLIP encoders.
  `encoders_from` (a tower file) says this for every encoder at once: each ViT and ConvNeXt in
  the tower starts from the file's `vit` / `convnext` and is frozen (`shared_encoders`), or
  trains with the fusion under `train_encoders` (docs/results: Mini-Gemini's mining trained on
  frozen encoders read the rung for the head but not for the MLLM; started from them, it did)."""
  if encoders_from and (init_params or frozen):
    raise ValueError(f"encoders_from={encoders_from!r} sets init_params and frozen itself; "
                     f"got also init_params={init_params!r}, frozen={frozen!r}.")
  if train_encoders and not encoders_from:
    raise ValueError("train_encoders=True trains the encoders started from encoders_from, and "
                     "encoders_from is not set.")
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule={schedule!r}: valid schedules are {sorted(SCHEDULES)}.")
  if until is not None and not 0 <= until <= 1:
    raise ValueError(f"until={until} is not an accuracy in [0, 1].")
  for subtree, keys, _ in build.init_params_entries(init_params, "init_params"):
    if keys[0] != "tower":
      raise ValueError(f"init_params entry for {subtree!r}: tower pre-training starts only "
                       "parts of the tower ('tower/…').")
  if not c.data.dataset.startswith("fine_detail/"):
    raise ValueError(f"Tower pre-training reads the embedded dataset's question labels; "
                     f"data.dataset={c.data.dataset!r} is not 'fine_detail/<config>'.")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = build.model_config(c, build.tokenizer(c).vocab_size)
  policy, tokens = build.policy(c, config), config.tower.max_tokens
  kinds = build.question_kinds(c, "pretrain.kinds")
  train = _Questions(build.data_source(c, "train"), policy, tokens, kinds=kinds,
                     cache=cache_views)
  val = _Questions(build.data_source(c, c.data.eval_split), policy, tokens, train.answers, kinds,
                   cache=cache_views)
  model = Pretrainer(config.tower, len(train.answers))
  rng = np.random.default_rng(c.seed)
  example = train.batch(np.arange(1))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(c.seed), example["views"],
                                         example["valid"], example["index"], example["cond"]))
  only_encoders = False
  if encoders_from:
    init_params, held = shared_encoders(params["params"]["tower"], encoders_from)
    frozen = "" if train_encoders else held
    only_encoders = set(jax.tree.leaves(_labels(params, held)["params"]["tower"])) == {"frozen"}
  loaded = build.initial_params(init_params, params["params"], "init_params")
  if loaded:
    params = {"params": state.adopt(params["params"], loaded)}
  train_all = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      SCHEDULES[schedule](lr, min(50, steps // 10), steps), weight_decay=0.05))
  labels = _labels(params, frozen)
  tx = optax.multi_transform({"train": train_all, "frozen": optax.set_to_zero()}, labels)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, b):
    def loss_fn(p):
      logits = model.apply(p, b["views"], b["valid"], b["index"], b["cond"])
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, b["label"])
      return jnp.sum(nll * b["mask"]) / jnp.maximum(jnp.sum(b["mask"]), 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  predict = jax.jit(lambda p, b: jnp.argmax(
      model.apply(p, b["views"], b["valid"], b["index"], b["cond"]), -1))

  def evaluate(params) -> dict[str, float]:
    right: dict[str, list[bool]] = {}
    for s in range(0, len(val.images), batch):
      b = val.batch(val.images[s:s + batch])
      hits = np.asarray(predict(params, _device(b))) == b["label"]
      for k, h, m in zip(b["kind"], hits, b["mask"]):
        if m:
          right.setdefault(str(k), []).append(bool(h))
    if not right:
      raise ValueError(f"No {c.data.eval_split} question could be asked: the resolution policy "
                       f"refused all {len(val.refused)} images.")
    return {k: float(np.mean(v)) for k, v in sorted(right.items())}

  def save(curve, stopped=None):
    files.save_params(workdir / files.PARAMS_FILE,
                      jax.tree.map(np.asarray, params["params"]["tower"]))
    (workdir / "pretrain.json").write_text(json.dumps(
        {"config": json.loads(c.to_json()), "steps": steps, "batch": batch, "lr": lr,
         "until": until, "schedule": schedule, "encoders_from": encoders_from,
         "train_encoders": train_encoders,
         "init_params": init_params, "frozen": frozen, "stopped": stopped,
         "answers": train.answers,
         # Images the resolution policy refused (their questions left out), per split.
         "refused_images": {"train": len(train.refused), c.data.eval_split: len(val.refused)},
         "curve": curve},
        indent=1))

  if only_encoders:
    # The tower is its shared encoders (LLaVA-1.5's ViT), which their own tower's pre-training
    # has already trained on these questions: nothing of a fusion to train.
    save([], "nothing to train")
    return {}
  curve, start = [], time.time()
  picks = [rng.choice(train.images, batch, replace=False) for _ in range(steps)]
  # Threads ahead of the step: PIL's decoding and resizing release the GIL, and they are what
  # bounds a fast accelerator. Grain keeps the batches in order.
  batches = grain.MapDataset.source(picks).map(train.batch).to_iter_dataset(
      grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers))
  for i, b in enumerate(batches, start=1):
    params, opt, loss = step(params, opt, _device(b))
    if i == 1:
      print(f"step 1 (compiles the step) loss {float(loss):.3f} {time.time() - start:.0f}s",
            flush=True)
    if i % eval_every == 0 or i == steps:
      accuracy = evaluate(params)
      curve.append({"step": i, "loss": float(loss), "seconds": time.time() - start, **accuracy})
      print(f"step {i} loss {float(loss):.3f} {time.time() - start:.0f}s " +
            " ".join(f"{k}={v:.2f}" for k, v in accuracy.items()), flush=True)
      learned = until is not None and min(accuracy.values()) >= until
      if learned or i == steps:
        save(curve, "until" if learned else "steps")
        break
      save(curve)
  return curve[-1]


# `pretrain`'s keyword arguments with a default: what a record written before an argument
# existed ran with.
_DEFAULTS = {name: p.default for name, p in inspect.signature(pretrain).parameters.items()
             if p.default is not inspect.Parameter.empty}


def finished(workdir: str | pathlib.Path, settings: dict[str, Any],
             config: dict[str, Any] | None = None) -> bool:
  """Whether `workdir` holds a pre-training that has ended with these `settings` (`pretrain`'s
  keyword arguments) and, given `config` (a config as JSON), of the same model, data, seed and
  pre-training question kinds: stage 0 and the ablation harness keep such a tower rather than
  train it again."""
  record = pathlib.Path(workdir) / "pretrain.json"
  done = json.loads(record.read_text()) if record.exists() else {}
  return (bool(done.get("stopped"))
          and all(done.get(k, _DEFAULTS.get(k)) == v for k, v in settings.items())
          and (config is None
               or (all(done["config"].get(k) == config[k] for k in ("model", "data", "seed"))
                   and _kinds(done["config"]) == _kinds(config))))


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
    raise ValueError(f"encoders_from={path!r}: the tower has no encoder named {ENCODERS} to "
                     f"start from it (its parts: {sorted(tower)}).")
  init = ",".join(f"tower/{'/'.join(p)}={path}#{name}" for p, name in found)
  return init, "^tower/(" + "|".join(re.escape("/".join(p)) for p, _ in found) + ")/"


def _labels(params: Any, frozen: str) -> Any:
  """"frozen" for the tower parameters whose path (from `tower/`) matches `frozen`, else
  "train" (the head always trains: a pattern freezing the whole tower makes a probe of it); a
  pattern that is not a regular expression, or freezes no tower parameter, is a ValueError."""
  try:
    regex = re.compile(frozen) if frozen else None
  except re.error as e:
    raise ValueError(f"frozen={frozen!r} is not a regular expression: {e}.") from None
  names = optim.path_names(params["params"])
  labels = {k: jax.tree.map(lambda n: "frozen" if k == "tower" and regex and regex.search(n)
                            else "train", v) for k, v in names.items()}
  if regex and "frozen" not in jax.tree.leaves(labels["tower"]):
    raise ValueError(f"frozen={frozen!r} freezes no tower parameter; paths look like "
                     f"{jax.tree.leaves(names['tower'])[:6]}.")
  return {"params": labels}


def _device(b: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in b.items() if k != "kind"}


def _define_flags() -> dict[str, Any]:
  """The command line's flags (defined only when run as a program: train.py imports this)."""
  return {
      "config": config_flags.DEFINE_config_file("config", None, "Config file (and its argument)."),
      "workdir": flags.DEFINE_string("workdir", None, "Where the tower's parameters are written."),
      "steps": flags.DEFINE_integer("steps", 300, "Optimizer updates."),
      "batch": flags.DEFINE_integer("batch", 32, "Images per update (with all their questions)."),
      "lr": flags.DEFINE_float("lr", 1e-3, "Peak AdamW learning rate (after a linear warm-up)."),
      "schedule": flags.DEFINE_enum(
          "schedule", "cosine", sorted(SCHEDULES), "After the warm-up: cosine decay to 0 at "
          "--steps, or constant (with --until, where --steps is only a cap)."),
      "eval_every": flags.DEFINE_integer("eval_every", 100, "Steps between validation passes."),
      "until": flags.DEFINE_float(
          "until", None, "Stop at the first validation pass where every question kind reaches "
          "this accuracy (a cosine schedule still spans --steps); unset: always run --steps."),
      "cache_views": flags.DEFINE_boolean(
          "cache_views", False, "Keep every image's views in memory after its first decoding "
          "(the resolution policies are deterministic): later epochs skip PNG decoding and "
          "resizing, which bound a CPU run; costs the views' size (4,000 images at 224 px: "
          "2.4 GB)."),
      "init_params": flags.DEFINE_string(
          "init_params", "", "Parts of the tower started from saved parameters, "
          "'tower/…=PATH[#INNER],…' as train.init_params (e.g. encoders pre-trained alone)."),
      "frozen": flags.DEFINE_string(
          "frozen", "", "Regular expression over the tower's parameter paths ('tower/vit/…') "
          "that do not train (e.g. '^tower/(vit|convnext)/': only the fusion trains)."),
      "encoders_from": flags.DEFINE_string(
          "encoders_from", "", "A tower file (e.g. another tower's pre-training) whose `vit` "
          "and `convnext` start every ViT and ConvNeXt of this tower, frozen: only the fusion "
          "and the head train. Replaces --init_params and --frozen."),
      "train_encoders": flags.DEFINE_boolean(
          "train_encoders", False, "With --encoders_from: the encoders start from the file's "
          "and train with the fusion and the head."),
      "workers": flags.DEFINE_integer(
          "workers", 0, "Threads preparing batches ahead of the step (0: in the training loop)."),
  }


if __name__ == "__main__":
  _FLAGS = _define_flags()
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    pretrain(_FLAGS["config"].value, _FLAGS["workdir"].value,
             **{k: f.value for k, f in _FLAGS.items() if k not in ("config", "workdir")})

  app.run(main)  # Exits 0: app.run would exit with (and print) a value main returned.
