"""Native-resolution batches: packing several images per row against one padded row per image.

The embedded dataset's images (long side 512–1024 px, aspect 1:3 to 3:1) are resized by
Qwen2-VL's `smart_resize` within a patch budget and encoded by a small native ViT three ways:
  * padded: one image per row, every row padded to the budget (one compiled shape);
  * bucketed: one image per row, padded to the smallest of a few geometric row lengths (one
    compile per bucket used);
  * packed: images placed first-fit into rows of the budget, block-diagonal attention keeping
    them apart (one compiled shape).
Prints a table (images/s, padding waste, compiled shapes, speed-up over padded), writes JSON.

  python benchmarks/native_packing.py --images 256 --out benchmarks/results
"""
import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import patches as patches_lib
from mmjax.data import pipeline
from mmjax.data.datasets import finedetail
from mmjax.models import native_vit


def encode_rows(encode, params, rows):
  """Runs every row batch through the encoder; returns seconds (after one warm-up per shape)."""
  seen = set()
  for batch in rows:
    shape = batch["patches"].shape
    if shape not in seen:
      seen.add(shape)
      jax.block_until_ready(encode(params, batch))
  tick = time.perf_counter()
  for batch in rows:
    jax.block_until_ready(encode(params, batch))
  return time.perf_counter() - tick, len(seen)


def batches(groups, images, length, rows_per_batch):
  """Row batches of `rows_per_batch` rows, row r holding the images of group r (the last batch
  filled up with empty rows)."""
  dim = images[0].patches.shape[1]
  empty = {"patches": np.zeros((length, dim), np.float32),
           "positions": np.zeros((length, 2), np.int32),
           "segment_ids": np.zeros((length,), np.int32)}
  out = []
  for s in range(0, len(groups), rows_per_batch):
    chunk = groups[s:s + rows_per_batch]
    rows = [patches_lib.pack([images[i] for i in g], length) for g in chunk]
    rows += [empty] * (rows_per_batch - len(rows))
    out.append({k: jnp.asarray(np.stack([r[k] for r in rows])) for k in empty})
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--max_patches", type=int, default=1024, help="Row length (patch budget).")
  parser.add_argument("--rows", type=int, default=4, help="Rows per encoder call.")
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  policy = pipeline.NativeResolution(max_patches=args.max_patches)
  source = finedetail.prepare("small", None).as_data_source()["train"]
  images = [patches_lib.native_image(source[i]["image"], policy.mean, policy.std,
                                     max_pixels=policy.max_pixels, min_pixels=policy.min_pixels)
            for i in range(args.images)]
  counts = [im.num_tokens for im in images]
  config = native_vit.NativeViTConfig(width=args.width, depth=args.depth, num_heads=4,
                                      mlp_dim=4 * args.width, out_width=args.width)
  model = native_vit.NativeViT(config)
  encode = jax.jit(lambda p, b: model.apply(p, b["patches"], b["positions"],
                                            b["segment_ids"])["merged"])
  one = [[i] for i in range(len(images))]
  params = model.init(jax.random.key(0), *batches(one[:1], images, args.max_patches,
                                                  1)[0].values())
  buckets = patches_lib.geometric_buckets(args.max_patches // 8, args.max_patches)
  by_bucket: dict[int, list[list[int]]] = {}
  for i, n in enumerate(counts):
    by_bucket.setdefault(patches_lib.bucket(n, buckets), []).append([i])
  packed_groups = patches_lib.pack_greedy(counts, args.max_patches)
  ways = {
      "padded": (batches(one, images, args.max_patches, args.rows),
                 patches_lib.padding_waste(counts, len(one), args.max_patches)),
      "bucketed": ([b for length, g in sorted(by_bucket.items())
                    for b in batches(g, images, length, args.rows)],
                   1 - sum(counts) / sum(length * len(g) for length, g in by_bucket.items())),
      "packed": (batches(packed_groups, images, args.max_patches, args.rows),
                 patches_lib.padding_waste(counts, len(packed_groups), args.max_patches)),
  }
  results = {"args": vars(args), "device": str(jax.devices()[0]),
             "mean_patches": float(np.mean(counts)), "rows_packed": len(packed_groups),
             "ways": {}}
  for name, (rows, waste) in ways.items():
    seconds, shapes = encode_rows(encode, params, rows)
    results["ways"][name] = {"images_per_sec": len(images) / seconds, "padding_waste": waste,
                             "compiled_shapes": shapes, "seconds": seconds}
  base = results["ways"]["padded"]["images_per_sec"]
  print(f"{len(images)} images, {np.mean(counts):.0f} patches on average (budget "
        f"{args.max_patches}); {len(packed_groups)} packed rows")
  print(f"{'batching':<10}{'images/s':>10}{'padding':>9}{'shapes':>8}{'× padded':>10}")
  for name, r in results["ways"].items():
    print(f"{name:<10}{r['images_per_sec']:>10.1f}{r['padding_waste']:>9.1%}"
          f"{r['compiled_shapes']:>8}{r['images_per_sec'] / base:>10.2f}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "native_packing.json").write_text(json.dumps(results, indent=1))
  print(f"wrote {out / 'native_packing.json'}")


if __name__ == "__main__":
  main()
