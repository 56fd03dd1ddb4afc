"""Train-step speed of the default config at several sizes: compile time, step time, tokens/s
and MFU against the `jnp.dot` peak measured in the same process. Prints a table, writes JSON.

  python benchmarks/train_step.py --sizes 'size=tiny;size=small;size=base' --steps 5

An entry is '[METHOD:]ARGS' (configs/METHOD.py, default.py when absent) and may override config
fields after '@', comma-separated, tuples '/'-separated (e.g.
'llava_hr:size=small@model.tower.convnext.widths=16/32/64/128', or LLaVA's stage 2 with the
tower frozen: '…@train.trainable=^(projector|llm)/'); `--name` picks the JSON file. Config
arguments such as 'size=small,res=448' or 'patch=16' size the rows for the tower's tokens.
"""
from mmjax import xla_flags

xla_flags.apply()  # As train.py does: the step measured is the step trained.

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmjax import config_args  # noqa: E402
from mmjax import sharding  # noqa: E402
from mmjax.data import pipeline  # noqa: E402
from mmjax.models import mllm  # noqa: E402
from mmjax.training import build  # noqa: E402
from mmjax.training import flops as flops_lib  # noqa: E402
from mmjax.training import optim  # noqa: E402
from mmjax.training import state as state_lib  # noqa: E402
from mmjax.training import step as step_lib  # noqa: E402

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def measure(entry: str, data_dir: str | None, steps: int, peak: float) -> dict:
  arg, _, overrides = entry.partition("@")
  method, _, arg = arg.rpartition(":")
  c = config_args.get_config(CONFIGS / f"{method or 'default'}.py", arg)
  c.data.data_dir = data_dir
  for item in filter(None, overrides.split(",")):
    key, value = item.split("=", 1)
    *path, field = key.split(".")
    node = c
    for part in path:
      node = node[part]
    current = node[field]
    node[field] = (tuple(int(v) for v in value.split("/")) if isinstance(current, tuple)
                   else type(current)(value))
  tok = build.tokenizer(c)
  config = build.model_config(c, tok.vocab_size)
  model = mllm.MLLM(config)
  fmt = build.formatter(c, c.train.task, config, tok)
  host = next(iter(pipeline.make_loader(build.data_source(c, "train"), fmt,
                                        global_batch_size=c.train.batch_size, seed=0)))
  mesh = sharding.make_mesh((-1, 1, 1))
  batch = pipeline.to_global(step_lib.model_batch(host), mesh)
  params = state_lib.abstract_params(model, step_lib.model_batch(host))
  tx = optim.optimizer(params, lr=optim.schedule(c.train.lr, 1, 100), weight_decay=0.0,
                       grad_clip=c.train.grad_clip, trainable=c.train.trainable)
  factory = state_lib.Factory(model, tx, step_lib.model_batch(host), mesh)
  state = factory.create(jax.random.key(0))
  # As in training: frozen parameters' gradients are dead code, which XLA removes.
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                   trainable=optim.trainable_mask(params, c.train.trainable)),
                 in_shardings=(factory.shardings, sharding.data_sharding(mesh)),
                 out_shardings=(factory.shardings, None), donate_argnums=0)
  tick = time.perf_counter()
  with jax.set_mesh(mesh), sharding.axis_rules():
    compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - tick
  state, m = compiled(state, batch)
  m["loss"].block_until_ready()
  tick = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch)
  m["loss"].block_until_ready()
  seconds = (time.perf_counter() - tick) / steps
  step_flops = flops_lib.compiled_flops(compiled)
  tokens = float(np.sum(host["segment_ids"] > 0))
  return {"config": entry, "parameters": state_lib.count(params),
          "batch": c.train.batch_size, "max_len": build.max_len(c, config),
          "compile_seconds": compile_seconds, "step_seconds": seconds,
          "tokens_per_sec": tokens / seconds, "flops_per_step": step_flops,
          "mfu": step_flops / seconds / peak}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="size=tiny;size=small;size=base",
                      help="'[METHOD:]ARGS[@OVERRIDES]' entries, ';'-separated.")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--name", default="train_step", help="Writes OUT/NAME.json.")
  args = parser.parse_args()
  peak = flops_lib.measured_peak_flops() * jax.device_count()
  rows = [measure(arg, args.data_dir, args.steps, peak) for arg in args.sizes.split(";")]
  print(f"\njnp.dot peak: {peak / 1e9:.1f} GFLOP/s")
  print(f"{'config':<44}{'params':>10}{'compile s':>11}{'step s':>9}{'tokens/s':>10}"
        f"{'GFLOP/step':>12}{'MFU':>7}")
  for r in rows:
    print(f"{r['config']:<44}{r['parameters']:>10,}{r['compile_seconds']:>11.1f}"
          f"{r['step_seconds']:>9.3f}{r['tokens_per_sec']:>10.0f}"
          f"{r['flops_per_step'] / 1e9:>12.1f}{r['mfu']:>7.2f}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.device_count()} "
            f"{jax.devices()[0].platform} device(s)", "xla_flags": os.environ["XLA_FLAGS"],
            "peak_flops": peak, "rows": rows}
  (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
  print(f"wrote {out / f'{args.name}.json'}")


if __name__ == "__main__":
  main()
