"""Logical-axis sharding: every name has a rule, and sharded execution equals one device."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import sharding
from mmjax.models import llm
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models import vit

# Every sharded dimension divisible by 8, so any (data, fsdp, tensor) split of 8 devices works.
CONFIG = mllm.MLLMConfig(
    tower=towers.ViTTowerConfig(vit.ViTConfig(image_size=16, patch_size=4, width=32, depth=2,
                                              num_heads=8, mlp_dim=64)),
    llm=llm.LLMConfig(vocab_size=64, width=32, depth=2, num_heads=8, num_kv_heads=8, mlp_dim=64))


def _batch(rng):
  b, length = 8, 24
  tokens = rng.integers(0, 64, (b, length))
  tokens[::2, 1:17] = CONFIG.image_token_id
  return {
      "tokens": tokens, "positions": np.broadcast_to(np.arange(length), (b, length)),
      "segment_ids": np.ones((b, length), np.int32), "targets": rng.integers(0, 64, (b, length)),
      "loss_mask": np.ones((b, length), np.float32),
      "images": rng.normal(size=(b, 16, 16, 3)).astype(np.float32),
  }


def _loss(params, batch):
  logits, _ = mllm.MLLM(CONFIG).apply({"params": params}, batch)
  return mllm.next_token_loss(logits, batch["targets"], batch["loss_mask"])["loss"]


def test_mesh_shapes():
  assert jax.device_count() == 8
  assert sharding.make_mesh((2, -1, 2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 16 devices"):
    sharding.make_mesh((4, 2, 2))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh((-1, -1, 2))


def test_unknown_logical_name_is_rejected():
  boxed = {"w": nn.LogicallyPartitioned(jnp.zeros((2, 2)), ("embed", "colour"))}
  with pytest.raises(ValueError, match="colour"):
    sharding.check_names(boxed)


@pytest.fixture(scope="module")
def reference():
  """(batch, loss, gradient) on one device."""
  batch = _batch(np.random.default_rng(0))
  params = nn.unbox(jax.jit(mllm.MLLM(CONFIG).init)(jax.random.key(0), batch))["params"]
  return batch, *jax.jit(jax.value_and_grad(_loss))(params, batch)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8), (1, 8, 1)])
def test_sharded_forward_and_gradient_equal_one_device(shape, reference):
  batch, ref_loss, ref_grad = reference
  model = mllm.MLLM(CONFIG)
  key = jax.random.key(0)
  mesh = sharding.make_mesh(shape)
  abstract = jax.eval_shape(model.init, key, batch)
  param_shardings = sharding.shardings(abstract, mesh)["params"]
  with jax.set_mesh(mesh), sharding.axis_rules():
    sharded_params = jax.jit(lambda k, b: model.init(k, b)["params"],
                             out_shardings=param_shardings)(key, batch)
    sharded_params = nn.unbox(sharded_params)
    sharded_batch = jax.device_put(batch, sharding.data_sharding(mesh))
    loss, grad = jax.jit(jax.value_and_grad(_loss))(sharded_params, sharded_batch)
  kernel = sharded_params["llm"]["blocks"]["layers_0"]["mlp"]["up"]["kernel"]
  assert kernel.sharding.shard_shape(kernel.shape) == (32 // shape[1], 64 // shape[2])
  np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grad, ref_grad)
