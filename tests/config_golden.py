"""What every method config builds, measured on a fixed batch: the numbers that pin a config's
behaviour across refactors (tests/test_config_golden.py compares them with the recorded ones).

Per config file and size: the parameter count, a digest of the parameter tree (every path and
shape), the visual tokens per image, the rows' length, and at the CPU sizes the loss of the
freshly initialised model (seed 0) on two fixed images with fixed captions, i.e. the first
step's loss (the papers' size, 7b, is only traced: its shapes, not its values). The byte
tokenizer stands in for the size's own (the small size's BPE is learned from the generated
dataset), so nothing here needs the dataset.

  python -m tests.config_golden        # records the configs not in tests/golden/configs.json
  python -m tests.config_golden --all  # re-records every one (only for an intended change of
                                       # the configs' behaviour, named in the commit)
"""
import hashlib
import json
import pathlib
import sys

import jax
import numpy as np

from mmjax import config_args
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.models import mllm
from mmjax.training import build

ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(__file__).with_name("golden") / "configs.json"
# Every config file of configs/ but common.py (no config) and default.py (llava15.py's alias,
# tests/test_config_golden.py checks that it is one).
METHODS = tuple(sorted(p.stem for p in (ROOT / "configs").glob("*.py")
                       if p.stem not in ("common", "default")))
SIZES = ("tiny", "small", "7b")
# Two images of other shapes than any tower's input (wide, tall), so the dynamic policies lay out
# several tiles, crops and patches.
SHAPES = ((90, 150), (140, 70))
CAPTIONS = ("a red circle left of two blue squares", "three green stars on a grey ground")


def _batch(c, config, tok) -> dict[str, np.ndarray]:
  fmt = build.formatter(c, "caption", config, tok)
  rng = np.random.default_rng(0)
  rows = [fmt.random_map({"image": rng.integers(0, 256, (*shape, 3), np.uint8),
                          "caption": caption}, np.random.default_rng(0))
          for shape, caption in zip(SHAPES, CAPTIONS)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _digest(params) -> str:
  shapes = sorted((jax.tree_util.keystr(path), str(tuple(x.shape)))
                  for path, x in jax.tree_util.tree_leaves_with_path(params))
  return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def _shapes(c, config) -> dict:
  """The numbers of a config too large to run here, from its traced shapes."""
  blank = build.policy(c, config).blank()
  batch = {k: np.zeros((1, 16) + ((3,) if k == "positions" and config.llm.position_axes == 3 else ()),
                       np.int32) for k in ("tokens", "positions", "segment_ids")}
  batch.update({k: np.zeros((1,) + blank[k].shape, blank[k].dtype) for k in config.tower.INPUTS})
  params = jax.eval_shape(mllm.MLLM(config).init, jax.random.key(0), batch)["params"]
  return {"params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
          "tree": _digest(params), "image_tokens": config.max_visual_tokens,
          "max_len": build.max_len(c, config)}


def measure(method: str, size: str) -> dict:
  """The pinned numbers of `configs/<method>.py` at `size`."""
  c = config_args.get_config(ROOT / "configs" / f"{method}.py", f"size={size}")
  c.data.tokenizer = "byte"
  tok = tokenizer_lib.ByteTokenizer()
  config = build.model_config(c, tok.vocab_size)
  if size == "7b":
    return _shapes(c, config)
  batch = _batch(c, config, tok)
  assert not batch["dropped"].any(), (method, size)
  model = mllm.MLLM(config)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  logits, _ = jax.jit(model.apply)({"params": params}, batch)
  loss = mllm.next_token_loss(logits, batch["targets"], batch["loss_mask"])["loss"]
  return {"params": int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params))),
          "tree": _digest(params),
          "image_tokens": config.max_visual_tokens, "max_len": build.max_len(c, config),
          "loss": float(loss)}


def main():
  results = {} if "--all" in sys.argv[1:] else json.loads(GOLDEN.read_text())
  for key in (f"{m}:{s}" for m in METHODS for s in SIZES):
    if key not in results:
      results[key] = measure(*key.split(":"))
      print(key, results[key])
  GOLDEN.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")


if __name__ == "__main__":
  main()
