"""Every tower, sharded, equals one device: forward and gradient on the (2, 2, 2) and (1, 1, 8)
meshes, each tower at its tiny config with the widths and heads divisible by 8 (so every
sharded dimension splits over 8 devices) and fed its own policy's views of eight images of
different shapes."""
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import sharding
from mmjax.models import towers
from mmjax.training import build
from tests import method_configs

ROOT = pathlib.Path(__file__).resolve().parents[1]
MESHES = [(2, 2, 2), (1, 1, 8)]
# (height, width) of the eight images: square, wide and tall, smaller and larger than the towers'
# inputs, so the dynamic policies lay out different numbers of tiles, crops and patches.
SHAPES = [(64, 64), (40, 90), (90, 40), (128, 96), (33, 47), (100, 100), (70, 120), (48, 48)]


def _tower(name: str):
  c = method_configs.get(name, "size=tiny")
  c.model.tower.vit.width, c.model.tower.vit.num_heads, c.model.tower.vit.mlp_dim = 32, 8, 64
  config = build.model_config(c, 64).tower
  policy = config.policy(c.data.aspect)
  rng = np.random.default_rng(0)
  rows = [policy(rng.integers(0, 256, (*shape, 3), np.uint8)) for shape in SHAPES]
  inputs = [np.stack([row[k] for row in rows]) for k in config.INPUTS]
  return towers.tower_for(config), inputs


def _loss(module, params, inputs, probe):
  out = module.apply({"params": params}, *inputs)
  return jnp.sum(out * probe) / np.sqrt(probe.size), out


@pytest.mark.parametrize("name", sorted(towers.TOWERS))
def test_sharded_forward_and_gradient_equal_one_device(name):
  module, inputs = _tower(name)
  abstract = jax.eval_shape(module.init, jax.random.key(0), *inputs)
  sharding.check_names(abstract)
  params = nn.unbox(jax.jit(module.init)(jax.random.key(0), *inputs))["params"]
  out_shape = jax.eval_shape(module.apply, {"params": params}, *inputs).shape
  probe = np.random.default_rng(1).standard_normal(out_shape).astype(np.float32)
  grad_fn = jax.value_and_grad(lambda p, x: _loss(module, p, x, probe), has_aux=True)
  (ref_loss, ref_out), ref_grad = jax.jit(grad_fn)(params, inputs)
  assert np.abs(np.asarray(ref_out)).max() > 0
  for shape in MESHES:
    mesh = sharding.make_mesh(shape)
    param_shardings = sharding.shardings(abstract, mesh)["params"]
    with jax.set_mesh(mesh), sharding.axis_rules():
      sharded = jax.device_put(params, param_shardings)
      batch = jax.device_put(inputs, sharding.data_sharding(mesh))
      (loss, out), grad = jax.jit(grad_fn)(sharded, batch)
    # The parameters really are split: some leaf holds 1/8 or less of its elements per device.
    fractions = [np.prod(x.sharding.shard_shape(x.shape)) / x.size
                 for x in jax.tree.leaves(sharded)]
    assert min(fractions) <= 1 / 8 if shape == (1, 1, 8) else min(fractions) <= 1 / 4, shape
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5, err_msg=str(shape))
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5, rtol=1e-5, err_msg=str(shape))
    # Summation order differs between meshes: float32 rounding scales with each gradient's size.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=1e-5 * max(1.0, np.abs(b).max()), rtol=1e-4, err_msg=str(shape)),
        grad, ref_grad)
