"""The training loop against its own step: how much of train.py's wall time per step is the step.

For each size, in one run: the default config's compiled train step timed alone on one batch
already on the device (the isolated step: the median of five groups of steps), then
`mmjax.training.loop.train` on the same config (one stage, no stage 0), its wall time per step
between consecutive logged steps (windows of LOG_EVERY steps: data loading, host→device copies,
metrics and all), the first window left out as warm-up; `loop_step_s` is the median window
(a pause of the shared CPU lands in one window), `loop_mean_step_s` the mean over all of them. With `--ref REV` the same two
measurements run first on the code at git revision REV (a temporary worktree, in a subprocess),
so a change to the loop is compared with what it replaced on the same machine, minutes apart.

  python benchmarks/train_loop.py --sizes tiny,small --ref 115d518
"""
import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = {"tiny": 60, "small": 70, "base": 40}  # Loop steps per size (the first window warms up).
LOG_EVERY = 10


def child(size: str, out: str) -> None:
  """Measures the tree on PYTHONPATH (this process's `mmjax`) at `size`; writes JSON to `out`."""
  from mmjax import xla_flags
  xla_flags.apply()  # As train.py does.
  import jax
  import numpy as np
  from mmjax import config_args
  from mmjax.data import pipeline
  from mmjax.models import mllm
  from mmjax.training import build
  from mmjax.training import loop
  from mmjax.training import metrics as metrics_lib

  steps = STEPS[size]
  c = config_args.get_config(pathlib.Path("configs/default.py"),
                             f"size={size},steps={steps},pretrain=0")
  c.train.align_fraction = 0.0  # One stage: one compiled step.
  c.train.log_every = LOG_EVERY
  c.train.checkpoint_every = 10 * steps  # Only the final checkpoint, after the last window.
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  model = mllm.MLLM(config)
  mesh = loop.mesh_from_config(c)
  (stage,) = build.stages(c)
  setup = loop._Setup(c, stage, model, config, tok, build.data_source(c, "train"), mesh)
  compiled = setup.compile()
  state = setup.factory.create(jax.random.key(0), None, 0)
  host = next(setup.iterator)
  batch = pipeline.to_global(setup.device_batch(host), mesh)
  for _ in range(3):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  repeats = 8 if size == "tiny" else 3
  groups = []
  for _ in range(5):
    tick = time.perf_counter()
    for _ in range(repeats):
      state, m = compiled(state, batch)
    jax.block_until_ready(m)
    groups.append((time.perf_counter() - tick) / repeats)
  isolated = float(np.median(groups))
  # The input pipeline alone (read, decode, format, copy to the devices), nothing else running:
  # on a CPU its work shares the cores with the step's.
  tick = time.perf_counter()
  for _ in range(20):
    batch = pipeline.to_global(setup.device_batch(next(setup.iterator)), mesh)
  jax.block_until_ready(batch)
  data_batch = (time.perf_counter() - tick) / 20
  del state, setup, batch

  walls = []
  write = metrics_lib.MetricsWriter.write

  def timed_write(self, step, metrics):
    walls.append((step, time.perf_counter()))
    write(self, step, metrics)

  metrics_lib.MetricsWriter.write = timed_write
  with tempfile.TemporaryDirectory() as workdir:
    loop.train(c, workdir)
    rows = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
  (s0, t0), (s1, t1) = walls[0], walls[-1]
  windows = [(tb - ta) / (sb - sa) for (sa, ta), (sb, tb) in zip(walls, walls[1:])]
  looped = float(np.median(windows))
  tokens = float(np.mean([r["tokens_per_sec"] * r["step_time"] for r in rows]))
  pathlib.Path(out).write_text(json.dumps({
      "size": size, "isolated_step_s": isolated, "isolated_groups_s": groups,
      "loop_step_s": looped, "loop_mean_step_s": (t1 - t0) / (s1 - s0), "loop_windows_s": windows,
      "loop_over_isolated": looped / isolated, "data_batch_s": data_batch, "tokens_per_step": tokens,
      "isolated_tokens_per_s": tokens / isolated, "loop_tokens_per_s": tokens / looped,
      "loop_steps_timed": s1 - s0}))


def _measure(tree: pathlib.Path, size: str) -> dict:
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), "--child", size,
                    "--child_out", out.name], cwd=tree, env=env, check=True)
    return json.loads(pathlib.Path(out.name).read_text())


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="tiny,small")
  parser.add_argument("--ref", default="", help="A git revision to measure first (before).")
  parser.add_argument("--out", default="benchmarks/results/train_loop.json")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--child_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args.child, args.child_out)
  trees = {}
  worktree = None
  if args.ref:
    worktree = pathlib.Path(tempfile.mkdtemp(prefix="mmjax-ref-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.ref], cwd=ROOT,
                   check=True, capture_output=True)
    trees[f"before ({args.ref})"] = worktree
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                        text=True).stdout.strip()
  dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip())
  trees[f"after ({head}{'+changes' if dirty else ''})"] = ROOT
  rows = []
  try:
    for size in args.sizes.split(","):
      for name, tree in trees.items():
        rows.append({"code": name, **_measure(tree, size)})
  finally:
    if worktree is not None:
      subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                     check=False, capture_output=True)
  print(f"\n{'code':<26}{'size':<7}{'isolated s':>11}{'loop s':>9}{'loop/iso':>10}"
        f"{'loop tok/s':>12}{'data s/batch':>14}")
  for r in rows:
    print(f"{r['code']:<26}{r['size']:<7}{r['isolated_step_s']:>11.4f}{r['loop_step_s']:>9.4f}"
          f"{r['loop_over_isolated']:>10.3f}{r['loop_tokens_per_s']:>12.0f}"
          f"{r.get('data_batch_s', float('nan')):>14.4f}")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv),
      "rows": rows}, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
