"""Checks before work: a config's values, its mesh and batch, a run folder, and the config a run
was trained with — all before data is generated, a program compiled or a file written.

Each failure is an `mmjax.errors.Error` naming the field (as `--config.FIELD` sets it) and what
would fix it. `train.py` and `eval.py` call these first; `loop.train` and `evaluation.evaluate`
call them too, for library users.
"""
import json
import math
import pathlib
from typing import Any, Callable

import jax
import ml_collections

from mmjax import errors
from mmjax import files
from mmjax import sharding

CONFIG_FILE = "config.json"  # A run's config, in its workdir.

# (field, test, requirement): fields every config has, checked by value alone.
_finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("train.steps", lambda x: x >= 0, "at least 0"),
    ("train.batch_size", lambda x: x >= 1, "at least 1"),
    ("train.grad_accum_steps", lambda x: x >= 1, "at least 1"),
    ("train.lr", lambda x: _finite(x) and x > 0, "a positive finite learning rate"),
    ("train.align_lr", lambda x: _finite(x) and x > 0, "a positive finite learning rate"),
    ("train.warmup_fraction", lambda x: _finite(x) and 0 <= x <= 1, "in [0, 1]"),
    ("train.align_fraction", lambda x: _finite(x) and 0 <= x < 1, "in [0, 1)"),
    ("train.weight_decay", lambda x: _finite(x) and x >= 0, "finite and at least 0"),
    ("train.adam_eps", lambda x: _finite(x) and x > 0, "positive and finite"),
    ("train.grad_clip", lambda x: _finite(x) and x >= 0, "finite and at least 0 (0: off)"),
    ("train.log_every", lambda x: x >= 1, "at least 1"),
    ("train.checkpoint_every", lambda x: x >= 1, "at least 1"),
    ("train.keep_checkpoints", lambda x: x >= 1, "at least 1"),
    ("train.max_dropped_share", lambda x: _finite(x) and 0 <= x <= 1, "in [0, 1]"),
    ("pretrain.steps", lambda x: x >= 0, "at least 0 (0: no stage 0)"),
    ("pretrain.batch", lambda x: x >= 1, "at least 1"),
    ("pretrain.lr", lambda x: _finite(x) and x > 0, "a positive finite learning rate"),
    ("pretrain.weight_decay", lambda x: _finite(x) and x >= 0, "finite and at least 0"),
    ("pretrain.eval_every", lambda x: x >= 1, "at least 1"),
    ("pretrain.workers", lambda x: x >= 0, "at least 0"),
    ("pretrain.until", lambda x: x is None or (_finite(x) and 0 <= x <= 1),
     "an accuracy in [0, 1], or None"),
    ("data.text_len", lambda x: x >= 1, "at least 1"),
    ("data.max_len", lambda x: x >= 0, "at least 0 (0: text_len + the visual tokens)"),
    ("data.max_questions", lambda x: x >= 1, "at least 1"),
    ("data.worker_count", lambda x: x >= 0, "at least 0"),
    ("data.eval_examples", lambda x: x >= 1, "at least 1"),
    ("eval.max_new_tokens", lambda x: x >= 1, "at least 1"),
    ("eval.batch_size", lambda x: x >= 1, "at least 1"),
    ("model.dtype", lambda x: x in ("float32", "bfloat16", "float16"),
     "one of float32, bfloat16, float16"),
    ("model.param_dtype", lambda x: x in ("float32", "bfloat16"), "float32 or bfloat16"),
)

# What a run's checkpoints depend on besides `model`: how text and images become tokens. Resume,
# eval.py and the generate command refuse a config that differs here from the run's.
FORMAT_FIELDS = ("data.tokenizer", "data.template", "data.text_len", "data.max_len",
                 "data.aspect")
# What an evaluation's numbers depend on besides the model: eval.py refuses to change them from
# the run's config unless asked (--allow_eval_changes).
EVAL_FIELDS = ("eval", "evals", "data.dataset", "data.eval_split", "data.eval_examples",
               "data.kinds")


def field_value(c: ml_collections.ConfigDict, field: str) -> Any:
  """The value of a dotted `field` of `c`."""
  node = c
  for key in field.split("."):
    node = node[key]
  return node


def config(c: ml_collections.ConfigDict) -> None:
  """Every value of `c` that has a range, and the rules between fields that need no devices."""
  for field, ok, requirement in _RULES:
    try:
      value = field_value(c, field)
    except (KeyError, AttributeError):
      continue  # A config without the field (an older run's) has nothing to check there.
    try:
      good = bool(ok(value))
    except TypeError:
      good = False
    if not good:
      raise errors.ConfigError(errors.message(f"{field}={value!r}", f"must be {requirement}",
                                              f"set --config.{field}"))
  if c.train.steps == 0 and c.pretrain.steps == 0:
    raise errors.ConfigError(errors.message(
        "train.steps=0", "nothing would train (pretrain.steps is 0 too)",
        "set --config.train.steps (or pretrain.steps for stage 0 alone)"))
  if c.train.batch_size % c.train.grad_accum_steps:
    raise errors.ConfigError(errors.message(
        f"train.batch_size={c.train.batch_size}",
        f"does not split into train.grad_accum_steps={c.train.grad_accum_steps} micro-batches",
        "make the batch a multiple of it"))


def mesh(c: ml_collections.ConfigDict, batches: tuple[str, ...] = ("train", "pretrain"),
         flag: str = "--config.mesh.*") -> jax.sharding.Mesh:
  """The config's mesh on this job's devices, and the batches of the stages `batches` names
  ("train": the MLLM's, "pretrain": stage 0's; each if it has steps) that it must split
  evenly; `flag` is what sets the mesh, for the message."""
  shape = (c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  try:
    m = sharding.make_mesh(shape)
  except ValueError as e:
    raise errors.ConfigError(errors.message(
        f"mesh (data, fsdp, tensor) = {shape}", errors.first_line(e),
        f"set {flag} for {jax.device_count()} devices (-1: the rest)")) from None
  shards, processes = sharding.num_batch_shards(m), jax.process_count()
  checked = []  # (field, micro-batches per batch, what the rows are)
  if "train" in batches and c.train.steps:
    checked.append(("train.batch_size", c.train.grad_accum_steps,
                    "each micro-batch (train.batch_size / train.grad_accum_steps)"))
  if "pretrain" in batches and c.pretrain.steps:
    checked.append(("pretrain.batch", 1, "stage 0's batch"))
  for field, micro, what in checked:
    batch = field_value(c, field)
    if (batch // micro) % shards or batch % processes:
      raise errors.ConfigError(errors.message(
          f"{field}={batch}",
          f"{what} of {batch // micro} rows does not split over the mesh's {shards} "
          f"data-parallel devices (mesh.data × mesh.fsdp) and {processes} processes",
          f"make it a multiple of {math.lcm(shards * micro, processes)}"))
  return m


def workdir(path: str | pathlib.Path, *, must_exist: bool = False) -> pathlib.Path:
  """A run folder: a writable folder, or one that can be created (`must_exist`: an existing run's
  folder, with checkpoints)."""
  path = pathlib.Path(path)
  if must_exist:
    if not path.is_dir():
      raise errors.InputError(errors.message(
          f"--workdir {path}", "no such run folder" if not path.exists() else "not a folder",
          "give the --workdir of a training run"))
    if not (path / "checkpoints").is_dir():
      raise errors.InputError(errors.message(
          f"--workdir {path}", "holds no checkpoints/ folder",
          "train first (python train.py ... --workdir DIR)"))
  return files.output_folder(path, "--workdir")


def checkpoint_steps(run: str | pathlib.Path) -> list[int]:
  """The steps a run folder holds checkpoints of (its `checkpoints/<step>` folders), sorted;
  read from the folder names, without opening a checkpoint manager (which would create it)."""
  directory = pathlib.Path(run) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def as_json(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """`c` as its JSON record reads back (tuples as lists)."""
  return json.loads(c.to_json())


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
  """A nested dict as {"model.llm.width": value, …} under `prefix`."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  return {k: v for key, sub in tree.items()
          for k, v in _flat(sub, f"{prefix}.{key}" if prefix else key).items()}


def differences(saved: dict[str, Any], now: dict[str, Any], fields: tuple[str, ...]
                ) -> dict[str, tuple[Any, Any]]:
  """{field: (saved, now)} for every leaf under `fields` (sections or single fields) whose
  values differ between two configs' JSON records."""
  out = {}
  for field in fields:
    a, b = saved, now
    for key in field.split("."):
      a = a.get(key) if isinstance(a, dict) else None
      b = b.get(key) if isinstance(b, dict) else None
    fa, fb = _flat(a, field), _flat(b, field)
    out.update({k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
                if fa.get(k) != fb.get(k)})
  return out


def describe(changed: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
  items = [f"{k} {a!r} → {b!r}" for k, (a, b) in list(changed.items())[:limit]]
  return ", ".join(items) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


def saved_config(run: pathlib.Path) -> dict[str, Any] | None:
  """The config a run folder recorded (`config.json`), or None if it has none."""
  path = pathlib.Path(run) / CONFIG_FILE
  if not path.exists():
    return None
  value = files.read_json(path, "the run's config")
  if not isinstance(value, dict):
    raise errors.InputError(errors.message(f"the run's config {path}", "not a JSON object"))
  return value


def same_run(c: ml_collections.ConfigDict, run: pathlib.Path, saved: dict[str, Any],
             fields: tuple[str, ...], doing: str, todo: str) -> None:
  """Refuses `c` where it differs from the run's `saved` config in `fields`."""
  changed = differences(saved, as_json(c), fields)
  if changed:
    raise errors.RunMismatch(errors.message(
        f"--config for {doing} {run}", f"differs from the run's {CONFIG_FILE} in "
        f"{len(changed)} field{'s' * (len(changed) > 1)}: {describe(changed)}", todo))


def same_vocabulary(c: ml_collections.ConfigDict, run: pathlib.Path, saved: dict[str, Any],
                    fingerprint: str, doing: str, todo: str) -> None:
  """Refuses a tokenizer whose vocabulary (`fingerprint`) is not the one the run recorded
  (`"derived"` of its config.json; a run that recorded none is not checked)."""
  if saved.get("derived", {}).get("tokenizer", fingerprint) != fingerprint:
    raise errors.RunMismatch(errors.message(
        f"data.tokenizer={c.data.tokenizer!r} for {doing} {run}",
        "its vocabulary differs from the one the run trained with", todo))
