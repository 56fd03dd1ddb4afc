"""The cost of a config's train step at any scale, from an ahead-of-time compile on abstract inputs.

Nothing is allocated: parameters, optimizer state and batch are `ShapeDtypeStruct`s with their
shardings, the step is lowered and compiled for the mesh, and XLA reports FLOPs (cost analysis)
and per-device memory (memory analysis). A 7B LLaVA on 8 simulated CPU devices plans in minutes:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m mmjax.plan \\
      --config configs/llava_hr.py:size=7b,res=1024 --mesh 1,8,1 --batch 8

`--hf_config config.json` plans a public checkpoint's model instead (the `config.json` of a
Hugging Face whole model that `python -m mmjax.convert` supports; no weights needed), with the
compute dtype, rematerialisation, layer scan and training settings of `--config`.
"""
import argparse
import dataclasses
import functools
import json
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from mmjax import cli
from mmjax import config_args
from mmjax import errors
from mmjax import files
from mmjax import sharding
from mmjax.convert import hf
from mmjax.convert import whole
from mmjax.models import mllm
from mmjax.models.towers import base as towers_lib
from mmjax.training import build
from mmjax.training import flops as flops_lib
from mmjax.training import optim
from mmjax.training import state as state_lib
from mmjax.training import step as step_lib
from mmjax.training import validate


def example_batch(c: ml_collections.ConfigDict, config: mllm.MLLMConfig, rows: int,
                  text_len: int) -> dict[str, np.ndarray]:
  """Zeros shaped like a model batch of `rows` sequences: the tower's visual tokens (at most, for
  a native-resolution tower) plus `text_len` text tokens (numpy zeros are not touched, so not
  really allocated)."""
  length = config.max_visual_tokens + text_len
  batch = {k: np.zeros((rows, length), np.int32)
           for k in ("tokens", "segment_ids", "targets", "loss_mask")}
  batch["positions"] = np.zeros((rows, length) + ((3,) if config.llm.position_axes == 3 else ()),
                                np.int32)
  blank = build.policy(c, config).blank()
  for key in config.tower.INPUTS:
    batch[key] = np.zeros((rows,) + blank[key].shape, blank[key].dtype)
  return batch


def from_hf_config(path: str, c: ml_collections.ConfigDict) -> mllm.MLLMConfig:
  """The model of a Hugging Face whole checkpoint's config.json, computing in `c`'s dtype with its
  rematerialisation and layer scan (`c.model.dtype`, `remat`, `scan_layers`)."""
  hf_config = files.read_json(path, "--hf_config")
  if not isinstance(hf_config, dict):
    raise errors.InputError(errors.message(f"--hf_config {path}", "not a JSON object"))
  with errors.expected(f"--hf_config {path}"):
    config = hf.converter(hf.architecture_of(hf_config)).config_from_hf(hf_config)
    if not isinstance(config, mllm.MLLMConfig):
      raise ValueError(f"{hf.architecture_of(hf_config)} is a part, not a whole model.")
  return whole.override(config, dtype=c.model.dtype, remat=c.model.remat,
                        scan_layers=c.model.scan_layers)


def unrolled(config: Any) -> Any:
  """`config` with `scan_layers` off in every part: XLA's cost analysis counts a loop's body once,
  so a scanned model's FLOPs are read from its unrolled program (the same computation)."""
  if not dataclasses.is_dataclass(config):
    return config
  fields = {f.name: (False if f.name == "scan_layers" else unrolled(getattr(config, f.name)))
            for f in dataclasses.fields(config) if f.init}
  return dataclasses.replace(config, **fields)


def _compile(c: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rows: int, text_len: int,
             config: mllm.MLLMConfig) -> tuple[Any, dict[str, np.ndarray], Any]:
  """The full-tuning train step of `config` compiled for `mesh` on abstract inputs; its example
  batch and abstract parameters."""
  model = mllm.MLLM(config)
  spec = example_batch(c, config, rows, text_len)
  params = state_lib.abstract_params(model, spec)
  tx = optim.optimizer(params, lr=optim.schedule(c.train.lr, 1, 100),
                       weight_decay=c.train.weight_decay, grad_clip=c.train.grad_clip,
                       trainable=c.train.trainable)
  factory = state_lib.Factory(model, tx, spec, mesh)
  data = sharding.data_sharding(mesh)
  step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx),
                 in_shardings=(factory.shardings, data), out_shardings=(factory.shardings, None),
                 donate_argnums=0)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=data) for k, v in spec.items()}
  with jax.set_mesh(mesh), sharding.axis_rules():
    return step.lower(factory.abstract, batch).compile(), spec, params


def plan(c: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, rows: int, text_len: int,
         config: mllm.MLLMConfig | None = None) -> dict[str, Any]:
  """FLOPs and per-device memory of one full-tuning train step of config `c` (or of the model
  `config` with `c`'s training settings) on `mesh`: memory from the program as configured, FLOPs
  from its unrolled form when it scans its layers."""
  if config is None:
    config = build.model_config(c, build.tokenizer(c).vocab_size)
  tick = time.perf_counter()
  compiled, spec, params = _compile(c, mesh, rows, text_len, config)
  flops = flops_lib.compiled_flops(
      compiled if unrolled(config) == config
      else _compile(c, mesh, rows, text_len, unrolled(config))[0])
  memory = compiled.memory_analysis()
  per_device = {
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes,
      "alias_bytes": memory.alias_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes,
  }
  # Donated state aliases its outputs: live memory is arguments + new outputs + temporaries.
  per_device["peak_bytes"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                              - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return {
      "tower": towers_lib.name_of(config.tower), "views": {k: list(v.shape) for k, v in
                                             build.policy(c, config).blank().items()},
      "visual_tokens": config.max_visual_tokens,
      "sequence": spec["tokens"].shape[1], "rows": rows, "mesh": dict(mesh.shape),
      "parameters": state_lib.count(params),
      "parameters_by_module": {name: state_lib.count(tree) for name, tree in params.items()},
      "flops_per_device": flops,
      "memory_per_device": per_device, "compile_seconds": time.perf_counter() - tick,
  }


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is below 1")
  return value


def _mesh(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not three comma-separated integers "
                                     "(data,fsdp,tensor; -1: the rest)") from None


def _main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="path.py[:argument string]")
  parser.add_argument("--mesh", default="1,-1,1", type=_mesh,
                      help="data,fsdp,tensor sizes (-1: the rest).")
  parser.add_argument("--batch", type=_positive, default=8, help="Global rows per step.")
  parser.add_argument("--text_len", type=_positive, default=512, help="Text tokens per row.")
  parser.add_argument("--hf_config", help="A Hugging Face whole model's config.json to plan "
                      "instead of --config's model (its training settings still apply).")
  args = parser.parse_args(argv)
  path, _, arg = args.config.partition(":")
  with errors.expected(f"--config {args.config}"):
    c = config_args.get_config(path, arg or None)
  if len(args.mesh) != 3:
    raise errors.ConfigError(errors.message(f"--mesh {','.join(map(str, args.mesh))}",
                                            "needs three sizes (data,fsdp,tensor)"))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = args.mesh
  validate.config(c)
  mesh = validate.mesh(c, batches=(), flag="--mesh")
  shards = sharding.num_batch_shards(mesh)
  if args.batch % shards:
    raise errors.ConfigError(errors.message(
        f"--batch {args.batch}", f"does not split over the mesh's {shards} data-parallel devices",
        f"give a multiple of {shards}"))
  if args.hf_config:
    config = from_hf_config(args.hf_config, c)
  else:
    with errors.expected(f"--config {args.config}"):  # The model's own checks, before compiling.
      config = build.model_config(c, build.tokenizer(c).vocab_size)
  result = plan(c, mesh, args.batch, args.text_len, config)
  print(json.dumps(result, indent=1))
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
