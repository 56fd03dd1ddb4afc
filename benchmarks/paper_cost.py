"""Paper-scale cost of LLaVA-1.5 vs LLaVA-HR (7B) from ahead-of-time compiles (`mmjax.plan`), next
to LLaVA-HR's Table 1 (training time and memory on A800s, METHODS §2.1).

Nothing is allocated: each config's full-tuning train step is compiled for 8 simulated devices
(FSDP over 8, one row per device, 512 text tokens besides the visual tokens) and XLA reports its
FLOPs and per-device memory. Ratios are to LLaVA-1.5 at 336 px, as in the paper.

  python benchmarks/paper_cost.py --out benchmarks/results
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402

from mmjax import config_args  # noqa: E402
from mmjax import plan  # noqa: E402
from mmjax import sharding  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
# (tower config, resolution, the paper's training hours and memory in GB; None: out of memory).
ROWS = [("llava15", 336, 15.6, 28), ("llava_hr", 768, 18.2, 38), ("llava15", 672, 31.8, 79),
        ("llava_hr", 1024, 20.7, 40), ("llava15", 1022, 69.4, None),
        ("llava_hr", 1536, 29.8, 52)]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--text_len", type=int, default=512)
  parser.add_argument("--only", default="", help="Comma-separated row indices to run.")
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / "paper_cost.json"
  done = json.loads(path.read_text()) if path.exists() else {}
  mesh = sharding.make_mesh((1, 8, 1))
  wanted = [int(i) for i in args.only.split(",")] if args.only else range(len(ROWS))
  for i in wanted:
    method, res, *_ = ROWS[i]
    key = f"{method}@{res}"
    if key in done:  # Resumable: each compile takes minutes.
      continue
    c = config_args.get_config(CONFIGS / f"{method}.py", f"size=7b,res={res}")
    done[key] = plan.plan(c, mesh, rows=8, text_len=args.text_len)
    print(key, json.dumps(done[key]), flush=True)
    path.write_text(json.dumps(done, indent=1))

  base = done.get("llava15@336")
  print(f"\n{'model':<18}{'visual tokens':>14}{'TFLOP/step':>12}{'× FLOPs':>9}{'paper × time':>14}"
        f"{'GB/device':>11}{'× memory':>10}{'paper × memory':>16}")
  for method, res, hours, memory in ROWS:
    r = done.get(f"{method}@{res}")
    if r is None or base is None:
      continue
    flops = r["flops_per_device"] * 8
    gb = r["memory_per_device"]["peak_bytes"] / 1e9
    paper_memory = f"{memory / 28:.2f}" if memory else "OOM"
    print(f"{method + '@' + str(res):<18}{r['visual_tokens']:>14}{flops / 1e12:>12.1f}"
          f"{flops / (base['flops_per_device'] * 8):>9.2f}{hours / 15.6:>14.2f}{gb:>11.1f}"
          f"{gb * 1e9 / base['memory_per_device']['peak_bytes']:>10.2f}{paper_memory:>16}")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
