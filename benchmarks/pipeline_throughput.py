"""Input-pipeline throughput by worker count, against what a train step consumes.

Measures examples/s of the grain pipeline (decode PNG, format a multi-turn VQA conversation,
tokenize, make the image views) for several worker counts, and examples/s of a jitted MLLM train
step (forward, backward, AdamW) at the same batch size, in the same process. The pipeline keeps
up when its rate exceeds the step's. Prints a table and writes JSON.

  python benchmarks/pipeline_throughput.py --config size=small --workers 0,1,2
"""
import argparse
import functools
import json
import os
import pathlib
import platform
import time

import jax

from mmjax import config_args
from mmjax import sharding
from mmjax.data import pipeline
from mmjax.models import mllm
from mmjax.training import build
from mmjax.training import optim
from mmjax.training import state as state_lib
from mmjax.training import step as step_lib

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def pipeline_rate(source, fmt, batch, workers, batches) -> float:
  loader = pipeline.make_loader(source, fmt, global_batch_size=batch, seed=0,
                                worker_count=workers)
  it = iter(loader)
  next(it)  # Start-up (worker processes, first decode) is not throughput.
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def step_rate(c, config, batch_np, steps) -> float:
  """Examples/s of the training step (`mmjax.training.step.train_step`) on one device."""
  model = mllm.MLLM(config)
  batch = step_lib.model_batch(batch_np)
  params = state_lib.abstract_params(model, batch)
  tx = optim.optimizer(params, lr=optim.schedule(c.train.lr, 1, 100), weight_decay=0.0,
                       grad_clip=c.train.grad_clip, trainable=".*")
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  state = state_lib.Factory(model, tx, batch, mesh).create(jax.random.key(0))
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx), donate_argnums=0)
  state, m = step(state, batch)
  m["loss"].block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
  m["loss"].block_until_ready()
  return steps * len(batch_np["tokens"]) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="size=small", help="configs/default.py arguments.")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batches", type=int, default=10)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  c = config_args.get_config(DEFAULT_CONFIG, args.config)
  c.data.data_dir = args.data_dir
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  source = build.data_source(c, "train")
  fmt = build.formatter(c, c.train.task, config, tok)
  batch = c.train.batch_size
  rows = []
  for workers in map(int, args.workers.split(",")):
    rate = pipeline_rate(source, fmt, batch, workers, args.batches)
    rows.append({"what": f"pipeline, {workers} workers", "examples_per_sec": rate})
  sample = next(iter(pipeline.make_loader(source, fmt, global_batch_size=batch, seed=0)))
  rows.append({"what": f"train step ({args.config}, batch {batch})",
               "examples_per_sec": step_rate(c, config, sample, args.steps)})
  consumed = rows[-1]["examples_per_sec"]
  print(f"\n{'what':<44}{'examples/s':>12}{'vs step':>9}")
  for row in rows:
    row["ratio_to_step"] = row["examples_per_sec"] / consumed
    print(f"{row['what']:<44}{row['examples_per_sec']:>12.1f}{row['ratio_to_step']:>8.1f}x")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  result = {"args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{jax.device_count()} {jax.devices()[0].platform} device(s)", "rows": rows}
  (out / "pipeline_throughput.json").write_text(json.dumps(result, indent=1))
  print(f"wrote {out / 'pipeline_throughput.json'}")


if __name__ == "__main__":
  main()
