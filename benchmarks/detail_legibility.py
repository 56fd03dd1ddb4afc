"""Is each fine detail legible at a resolution, given where it is? A crop probe.

The learnability curves (`dataset_learnability.py`) ask a model to find a detail and read it; this
asks only the second half. Every detail of a scene (the marks, the boxes' codes, the grey
panel's hidden figures and the grey card's hidden digit) is cut out of
the image's fixed-resolution view (`pipeline.FixedResolution`, padded to a square as LLaVA-1.5
does) at each resolution, centred on the detail with a small random shift, and an MLP reads the
answer from the crop's pixels alone (mark shape, code digit, the figures' pair, number and
shape, the hidden digit). The crop covers the same part of the image at every resolution
(`Detail.crop` px at 448 px), so a detail is legible at a resolution when the probe beats
the majority answer there: the fine ladder's promise is illegible at 224 px, legible at 448.
Scenes are redrawn from the generator (`finedetail.example_rng`, the stream an example is drawn
from), so no generated dataset is needed. Prints a table, writes
JSON.

  python benchmarks/detail_legibility.py --res 224,448 --out benchmarks/results
"""
import argparse
import dataclasses
import json
import multiprocessing
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.data import pipeline
from mmjax.data.datasets import finedetail
from mmjax.data.datasets import scenes



@dataclasses.dataclass(frozen=True)
class Detail:
  kind: str  # The scene things it is read from.
  answer: Callable[[scenes.Thing, scenes.Scene], str]  # The answer of one thing.
  crop: int  # Crop side in pixels of a REFERENCE-px view (scaled at the others).


# A mark or a code fits a 16-px crop at 448 px (dataset 3.0.0's fine rungs, now the small objects
# of the position questions); the grey panel or card (at most 0.3 of the long side, 134 px at
# 448) a 136-px one. A crop's centre is shifted from the thing's by up to a quarter of the crop,
# at most MAX_SHIFT.
DETAILS = {
    "mark_shape": Detail("mark", lambda t, s: t.shape, 16),
    "box_code": Detail("box", lambda t, s: t.code, 16),
    "pattern_colours": Detail("panel", lambda t, s: t.colour, 136),
    "pattern_count": Detail("panel", lambda t, s: str(len(s.of_kind("figure"))), 136),
    "pattern_shape": Detail("panel", lambda t, s: s.of_kind("figure")[0].shape, 136),
    "pattern_code": Detail("card", lambda t, s: t.code, 136),
}
REFERENCE = 448  # The view whose pixels crop sides and shifts are given in.
MAX_SHIFT = 8  # Pixels of the REFERENCE view a crop's centre moves by at most.


def _crop_side(crop: int, res: int) -> int:
  """The crop's side in a `res`-px view: `crop` px of the REFERENCE view, the same image area."""
  return max(round(crop * res / REFERENCE), 1)


def _crops(args) -> dict[str, dict[int, list]]:
  """{detail: {res: [(pixels, answer), ...]}} for one scene."""
  config_name, split, index, resolutions, details = args
  config = finedetail.CONFIGS[config_name]
  image, scene = scenes.render(finedetail.example_rng(config, split, index), config.scene)
  shift = np.random.default_rng([index, finedetail.SPLITS.index(split)])
  side = max(scene.width, scene.height)
  left, top = (side - scene.width) // 2, (side - scene.height) // 2  # The policy's padding.
  views = {r: pipeline.FixedResolution((r,))(np.asarray(image))["images"] for r in resolutions}
  out = {d: {r: [] for r in resolutions} for d in details}
  for name in details:
    detail = DETAILS[name]
    for thing in scene.of_kind(detail.kind):
      # One shift per thing, in the REFERENCE view's pixels: every view cuts the same area.
      reach = min(detail.crop // 4, MAX_SHIFT)
      dx, dy = shift.integers(-reach, reach + 1, size=2)
      for r in resolutions:
        scale, size = r / side, _crop_side(detail.crop, r)
        cx = ((thing.box[0] + thing.box[2]) / 2 + left) * scale + dx * r / REFERENCE
        cy = ((thing.box[1] + thing.box[3]) / 2 + top) * scale + dy * r / REFERENCE
        x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
        if 0 <= x0 and 0 <= y0 and x0 + size <= r and y0 + size <= r:
          out[name][r].append((views[r][y0:y0 + size, x0:x0 + size].reshape(-1),
                               detail.answer(thing, scene)))
  return out


def probe(train: list, val: list, steps: int, seed: int) -> dict[str, float]:
  """An MLP (pixels → 256 → answers) trained on `train` crops; accuracies and the majority's."""
  answers = sorted({a for _, a in train})
  x_train = np.stack([x for x, _ in train])
  y_train = np.asarray([answers.index(a) for _, a in train])
  kept = [(x, a) for x, a in val if a in answers]
  x_val = np.stack([x for x, _ in kept])
  y_val = np.asarray([answers.index(a) for _, a in kept])
  k1, k2 = jax.random.split(jax.random.key(seed))
  dim = x_train.shape[1]
  params = {"w1": jax.random.normal(k1, (dim, 256)) / np.sqrt(dim), "b1": jnp.zeros(256),
            "w2": jax.random.normal(k2, (256, len(answers))) / 16.0,
            "b2": jnp.zeros(len(answers))}

  def logits(p, x):
    return jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  tx = optax.adamw(1e-3, weight_decay=0.05)
  opt = tx.init(params)

  @jax.jit
  def step(p, o, x, y):
    loss, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        logits(p, x), y).mean())(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    rows = rng.integers(0, len(x_train), 256)
    params, opt, _ = step(params, opt, x_train[rows], y_train[rows])
  accuracy = lambda x, y: float(np.mean(np.asarray(jnp.argmax(logits(params, x), -1)) == y))
  return {"val": accuracy(x_val, y_val), "train": accuracy(x_train[:4000], y_train[:4000]),
          "majority": float(np.mean(y_val == np.bincount(y_train).argmax())),
          "answers": len(answers), "train_crops": len(train), "val_crops": len(kept)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="small", choices=sorted(finedetail.CONFIGS))
  parser.add_argument("--res", default="224,448", help="View sides, comma-separated.")
  parser.add_argument("--details", default=",".join(DETAILS),
                      help=f"Comma-separated details to read, of {', '.join(DETAILS)}.")
  parser.add_argument("--train_images", type=int, default=3000)
  parser.add_argument("--val_images", type=int, default=400)
  parser.add_argument("--steps", type=int, default=3000, help="Probe updates of 256 crops.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  resolutions = sorted(int(r) for r in args.res.split(","))
  details = [d.strip() for d in args.details.split(",") if d.strip()]
  unknown = [d for d in details if d not in DETAILS]
  if unknown or not details:
    raise ValueError(f"--details={args.details!r}: unknown {unknown}; valid: "
                     f"{', '.join(DETAILS)}.")
  sizes = dict(zip(finedetail.SPLITS, finedetail.CONFIGS[args.config].sizes))
  for flag, split, wanted in (("train_images", "train", args.train_images),
                              ("val_images", "validation", args.val_images)):
    if wanted > sizes[split]:
      raise ValueError(f"--{flag}={wanted}: the {args.config} config's {split} split has "
                       f"{sizes[split]} images.")
  tick = time.perf_counter()
  crops = {}
  with multiprocessing.Pool() as pool:
    for split, n in (("train", args.train_images), ("validation", args.val_images)):
      scenes_crops = pool.map(_crops, [(args.config, split, i, resolutions, details)
                                       for i in range(n)], chunksize=32)
      crops[split] = {d: {r: [c for s in scenes_crops for c in s[d][r]] for r in resolutions}
                      for d in details}
  print(f"crops of {args.train_images} + {args.val_images} scenes: "
        f"{time.perf_counter() - tick:.0f} s")
  rows = []
  for detail in details:
    for r in resolutions:
      result = probe(crops["train"][detail][r], crops["validation"][detail][r], args.steps,
                     args.seed)
      rows.append({"detail": detail, "res": r,
                   "crop_px": _crop_side(DETAILS[detail].crop, r), **result})
  print(f"\n{'detail':<18}{'res':>5}{'crop px':>9}{'answers':>9}{'majority':>10}{'probe':>8}"
        f"{'train':>8}")
  for row in rows:
    print(f"{row['detail']:<18}{row['res']:>5}{row['crop_px']:>9}{row['answers']:>9}"
          f"{row['majority']:>10.3f}{row['val']:>8.3f}{row['train']:>8.3f}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "detail_legibility.json").write_text(json.dumps(
      {"config": args.config, "steps": args.steps, "seed": args.seed,
       "train_images": args.train_images, "val_images": args.val_images, "rows": rows},
      indent=1) + "\n")
  print(f"wrote {out / 'detail_legibility.json'}")


if __name__ == "__main__":
  main()
