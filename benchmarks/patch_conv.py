"""ConvNeXt's patch convolutions (the 4×4 stem, the 2×2 downsampling layers) as XLA's strided
convolution (`nn.Conv`) and as `convnext.PatchConv` (one matmul over the patches), forward and
gradient (input and parameters), at a config's shapes, in one process. Prints a table, writes JSON.

  python benchmarks/patch_conv.py --config configs/llava_hr.py:size=small --batch 32
"""
import argparse
import json
import pathlib
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import config_args
from mmjax.models import convnext


def seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compiles.
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/llava_hr.py:size=small")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results/patch_conv.json")
  args = parser.parse_args()
  path, _, arg = args.config.partition(":")
  c = config_args.get_config(path, arg)
  widths, side = c.model.tower.convnext.widths, c.model.tower.image_size
  # (name, input side, input channels, output channels, patch side) of every patch convolution.
  layers = [("stem", side, 3, widths[0], convnext.STEM_PATCH)]
  for s in range(1, len(widths)):
    layers.append((f"down_{s}", side // 4 // 2 ** (s - 1), widths[s - 1], widths[s], 2))
  rng = np.random.default_rng(0)
  rows = []
  for name, hw, cin, cout, size in layers:
    x = jnp.asarray(rng.standard_normal((args.batch, hw, hw, cin)), jnp.float32)
    modules = {"xla_conv": nn.Conv(cout, (size, size), strides=(size, size), padding="VALID"),
               "patch_conv": convnext.PatchConv(cout, size, in_axis=None)}
    row = {"layer": name, "input": [args.batch, hw, hw, cin], "features": cout}
    for kind, module in modules.items():
      params = nn.unbox(module.init(jax.random.key(0), x))
      forward = jax.jit(module.apply)
      grad = jax.jit(jax.grad(lambda p, x, m=module: jnp.sum(m.apply(p, x) ** 2),
                              argnums=(0, 1)))
      row[f"{kind}_forward_s"] = seconds(forward, params, x, repeats=args.repeats)
      row[f"{kind}_grad_s"] = seconds(grad, params, x, repeats=args.repeats)
    for what in ("forward", "grad"):
      row[f"{what}_speedup"] = row[f"xla_conv_{what}_s"] / row[f"patch_conv_{what}_s"]
    rows.append(row)
  print(f"\n{args.config}, batch {args.batch}, {jax.devices()[0].platform}")
  print("| layer | input | XLA conv fwd / grad s | PatchConv fwd / grad s | speed-up fwd / grad |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['layer']} | {'×'.join(map(str, r['input']))} | {r['xla_conv_forward_s']:.4f} / "
          f"{r['xla_conv_grad_s']:.4f} | {r['patch_conv_forward_s']:.4f} / "
          f"{r['patch_conv_grad_s']:.4f} | {r['forward_speedup']:.2f}× / "
          f"{r['grad_speedup']:.2f}× |")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"config": args.config, "batch": args.batch,
                             "device": jax.devices()[0].device_kind,
                             "machine": platform.machine(), "rows": rows}, indent=1))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
