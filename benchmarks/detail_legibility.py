"""Is each fine detail legible at a resolution, given where it is? A crop probe.

The learnability curves (`dataset_learnability.py`) ask a model to find a detail and read it; this
asks only the second half. Every fine detail of a scene (the marks, the boxes' codes, the
checkerboard) is cut out of the image's fixed-resolution view (`pipeline.FixedResolution`,
padded to a square as LLaVA-1.5 does) at each resolution, centred on the detail with a random
shift of up to a quarter of the crop, and an MLP reads the answer from the crop's pixels alone
(mark shape, code digit, checkerboard pair). The crop covers the same part of the image at every
resolution (`--crop` px at the largest), so a detail is legible at a resolution when the probe
beats the majority answer there: the dataset's promise is illegible at 224 px, legible at 448.
Scenes are redrawn from the generator (`finedetail.example_rng`, the stream an example is drawn
from), so no generated dataset is needed. Prints a table, writes
JSON.

  python benchmarks/detail_legibility.py --res 224,448 --out benchmarks/results
"""
import argparse
import json
import multiprocessing
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.data import pipeline
from mmjax.data.datasets import finedetail
from mmjax.data.datasets import scenes

# The details read, each as (the scene things it is read from, the answer of one thing).
DETAILS = {
    "mark_shape": ("mark", lambda t: t.shape),
    "box_code": ("box", lambda t: t.code),
    "pattern_colours": ("pattern", lambda t: t.colour),
}


def _crop_side(crop: int, res: int, largest: int) -> int:
  """The crop's side in a `res`-px view: `crop` px of the `largest` view, the same image area."""
  return max(round(crop * res / largest), 1)


def _crops(args) -> dict[str, dict[int, list]]:
  """{detail: {res: [(pixels, answer), ...]}} for one scene."""
  config_name, split, index, resolutions, crop = args
  config = finedetail.CONFIGS[config_name]
  image, scene = scenes.render(finedetail.example_rng(config, split, index), config.scene)
  shift = np.random.default_rng([index, finedetail.SPLITS.index(split)])
  side = max(scene.width, scene.height)
  left, top = (side - scene.width) // 2, (side - scene.height) // 2  # The policy's padding.
  views = {r: pipeline.FixedResolution((r,))(np.asarray(image))["images"] for r in resolutions}
  out = {d: {r: [] for r in resolutions} for d in DETAILS}
  for detail, (kind, answer) in DETAILS.items():
    for thing in scene.of_kind(kind):
      # One shift per thing, in units of the largest view's pixels: every view cuts the same area.
      dx, dy = shift.integers(-(crop // 4), crop // 4 + 1, size=2)
      for r in resolutions:
        scale, size = r / side, _crop_side(crop, r, max(resolutions))
        cx = ((thing.box[0] + thing.box[2]) / 2 + left) * scale + dx * r / max(resolutions)
        cy = ((thing.box[1] + thing.box[3]) / 2 + top) * scale + dy * r / max(resolutions)
        x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
        if 0 <= x0 and 0 <= y0 and x0 + size <= r and y0 + size <= r:
          out[detail][r].append((views[r][y0:y0 + size, x0:x0 + size].reshape(-1),
                                 answer(thing)))
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
  parser.add_argument("--crop", type=int, default=16,
                      help="Crop side in pixels of the largest view (scaled at the others).")
  parser.add_argument("--train_images", type=int, default=3000)
  parser.add_argument("--val_images", type=int, default=400)
  parser.add_argument("--steps", type=int, default=3000, help="Probe updates of 256 crops.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  resolutions = sorted(int(r) for r in args.res.split(","))
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
      scenes_crops = pool.map(_crops, [(args.config, split, i, resolutions, args.crop)
                                       for i in range(n)], chunksize=32)
      crops[split] = {d: {r: [c for s in scenes_crops for c in s[d][r]] for r in resolutions}
                      for d in DETAILS}
  print(f"crops of {args.train_images} + {args.val_images} scenes: "
        f"{time.perf_counter() - tick:.0f} s")
  rows = []
  for detail in DETAILS:
    for r in resolutions:
      result = probe(crops["train"][detail][r], crops["validation"][detail][r], args.steps,
                     args.seed)
      rows.append({"detail": detail, "res": r,
                   "crop_px": _crop_side(args.crop, r, max(resolutions)), **result})
  print(f"\n{'detail':<18}{'res':>5}{'crop px':>9}{'answers':>9}{'majority':>10}{'probe':>8}"
        f"{'train':>8}")
  for row in rows:
    print(f"{row['detail']:<18}{row['res']:>5}{row['crop_px']:>9}{row['answers']:>9}"
          f"{row['majority']:>10.3f}{row['val']:>8.3f}{row['train']:>8.3f}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "detail_legibility.json").write_text(json.dumps(
      {"config": args.config, "crop": args.crop, "steps": args.steps, "seed": args.seed,
       "train_images": args.train_images, "val_images": args.val_images, "rows": rows},
      indent=1) + "\n")
  print(f"wrote {out / 'detail_legibility.json'}")


if __name__ == "__main__":
  main()
