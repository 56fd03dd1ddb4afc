"""Input-pipeline throughput by worker count, against what a train step consumes.

Measures examples/s of the grain pipeline (decode PNG, format a multi-turn VQA conversation,
tokenize, make the image views) for several worker counts, and examples/s of a jitted MLLM train
step (forward, backward, AdamW) at the same batch size, in the same process. The pipeline keeps
up when its rate exceeds the step's. Prints a table and writes JSON.

  python benchmarks/pipeline_throughput.py --workers 0,1,2 --out benchmarks/results
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
import optax

from mmjax.data import pipeline
from mmjax.data import tokenizer
from mmjax.data.datasets import finedetail
from mmjax.models import llm
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models import vit


def model_config(size: int) -> mllm.MLLMConfig:
  """A CPU-sized LLaVA-1.5-style model: ViT at `size` px, patch 16, and a small decoder."""
  return mllm.MLLMConfig(
      tower=towers.ViTTowerConfig(vit.ViTConfig(image_size=size, patch_size=16, width=192,
                                                depth=6, num_heads=3, mlp_dim=768)),
      llm=llm.LLMConfig(vocab_size=tokenizer.ByteTokenizer().vocab_size, width=256, depth=4,
                        num_heads=4, num_kv_heads=4, mlp_dim=1024))


def pipeline_rate(source, fmt, batch, workers, batches) -> float:
  loader = pipeline.make_loader(source, fmt, global_batch_size=batch, seed=0,
                                worker_count=workers)
  it = iter(loader)
  next(it)  # Start-up (worker processes, first decode) is not throughput.
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def step_rate(config, batch_np, steps) -> float:
  model = mllm.MLLM(config)
  batch = {k: jnp.asarray(v) for k, v in batch_np.items()
           if k in ("tokens", "positions", "segment_ids", "targets", "loss_mask", "images")}
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch))["params"]
  tx = optax.adamw(1e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, batch)
      return mllm.next_token_loss(logits, batch["targets"], batch["loss_mask"])["loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  params, opt, loss = step(params, opt, batch)
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(steps):
    params, opt, loss = step(params, opt, batch)
  loss.block_until_ready()
  return steps * len(batch_np["tokens"]) / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="small", help="fine_detail builder config.")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=224, help="Image side the model sees.")
  parser.add_argument("--max_len", type=int, default=768)
  parser.add_argument("--batches", type=int, default=10)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results")
  args = parser.parse_args()
  source = finedetail.prepare(args.config, args.data_dir).as_data_source()["train"]
  config = model_config(args.size)
  fmt = pipeline.FormatExample(
      task="vqa", template="vicuna_v1", tokenizer=tokenizer.ByteTokenizer(),
      num_image_tokens=config.tower.num_tokens(args.size, args.size), max_len=args.max_len,
      policy=pipeline.FixedResolution((args.size,)), max_questions=6)
  rows = []
  for workers in map(int, args.workers.split(",")):
    rate = pipeline_rate(source, fmt, args.batch, workers, args.batches)
    rows.append({"what": f"pipeline, {workers} workers", "examples_per_sec": rate})
  sample = next(iter(pipeline.make_loader(source, fmt, global_batch_size=args.batch, seed=0)))
  rows.append({"what": "train step (ViT-6x192 @%d + LLM-4x256)" % args.size,
               "examples_per_sec": step_rate(config, sample, args.steps)})
  consumed = rows[-1]["examples_per_sec"]
  print(f"\n{'what':<44}{'examples/s':>12}{'vs step':>9}")
  for row in rows:
    row["ratio_to_step"] = row["examples_per_sec"] / consumed
    print(f"{row['what']:<44}{row['examples_per_sec']:>12.1f}{row['ratio_to_step']:>8.1f}x")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  result = {"args": vars(args), "machine": f"{platform.processor() or platform.machine()}, "
            f"{jax.device_count()} {jax.devices()[0].platform} device(s)", "rows": rows}
  (out / "pipeline_throughput.json").write_text(json.dumps(result, indent=1))
  print(f"wrote {out / 'pipeline_throughput.json'}")


if __name__ == "__main__":
  main()
