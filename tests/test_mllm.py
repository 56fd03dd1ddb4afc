"""LLaVA-style assembly: splicing, loss masking, mixed batches, projectors, full-size shapes."""
import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import connectors
from mmjax.models import llm
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models import vit

IMAGE = -200
TINY = mllm.MLLMConfig(
    tower=towers.ViTTowerConfig(vit.ViTConfig(image_size=28, patch_size=7, width=24, depth=3,
                                              num_heads=4, mlp_dim=48)),
    llm=llm.LLMConfig(vocab_size=61, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=48),
    image_token_id=IMAGE)
N_VISUAL = 16  # (28 / 7)^2 patches, class token dropped.


def _batch(rng, with_image=(True, False), length=24):
  rows = len(with_image)
  tokens = rng.integers(0, TINY.llm.vocab_size, (rows, length))
  for r, has in enumerate(with_image):
    if has:
      tokens[r, 2:2 + N_VISUAL] = IMAGE
  return {
      "tokens": jnp.asarray(tokens),
      "positions": jnp.broadcast_to(jnp.arange(length), (rows, length)),
      "segment_ids": jnp.ones((rows, length), jnp.int32),
      "targets": jnp.asarray(np.roll(tokens, -1, axis=1) % TINY.llm.vocab_size),
      "loss_mask": jnp.asarray(np.arange(length)[None] >= length - 4).repeat(rows, 0),
      "images": jnp.asarray(rng.normal(size=(rows, 28, 28, 3)), jnp.float32),
  }


@pytest.fixture(scope="module")
def variables():
  batch = _batch(np.random.default_rng(0))
  return nn.unbox(jax.jit(mllm.MLLM(TINY).init)(jax.random.key(0), batch))


def test_merge_writes_visual_tokens_in_order():
  text = jnp.zeros((2, 6, 1))
  visual = jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3, 1)
  is_visual = jnp.array([[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
  merged = mllm.merge_embeddings(text, visual, is_visual)[..., 0]
  np.testing.assert_array_equal(merged, [[0, 1, 2, 0, 3, 0], [0, 0, 0, 0, 0, 0]])


def test_visual_tokens_reach_the_llm_and_rows_stay_independent(variables, rng):
  batch = _batch(rng)
  model = mllm.MLLM(TINY)
  logits, _ = model.apply(variables, batch)
  # Row 0 has an image: its pixels change its logits.
  changed = dict(batch, images=batch["images"].at[0].add(1.0))
  logits2, _ = model.apply(variables, changed)
  assert not np.allclose(logits[0], logits2[0])
  # Row 1 has none: its logits ignore every image and equal a text-only LLM pass.
  changed = dict(batch, images=batch["images"] * 5.0)
  np.testing.assert_allclose(model.apply(variables, changed)[0][1], logits[1], atol=1e-6)
  text_only = llm.Decoder(TINY.llm).apply(
      {"params": variables["params"]["llm"]}, batch["tokens"][1:], batch["positions"][1:],
      batch["segment_ids"][1:], method=llm.Decoder.forward_tokens)[0]
  np.testing.assert_allclose(logits[1], text_only[0], atol=1e-5)


def test_spliced_embeddings_are_the_projected_tower_features(variables, rng):
  batch = _batch(rng)
  model = mllm.MLLM(TINY)
  visual = model.apply(variables, {"images": batch["images"]}, method=model.encode_images)
  assert visual.shape == (2, N_VISUAL, TINY.llm.width)
  merged = model.apply(variables, batch["tokens"], {"images": batch["images"]}, method=model.embed)
  np.testing.assert_allclose(merged[0, 2:2 + N_VISUAL], visual[0], atol=1e-6)
  hidden = vit.ViT(TINY.tower.vit).apply({"params": variables["params"]["tower"]["vit"]},
                                         batch["images"], method="hidden_states")
  np.testing.assert_allclose(
      model.apply(variables, batch["images"], method=lambda m, x: m.tower(x)),
      hidden[-2][:, 1:], atol=1e-6)


def test_loss_counts_only_answer_tokens(variables, rng):
  batch = _batch(rng)
  logits, _ = mllm.MLLM(TINY).apply(variables, batch)
  out = mllm.next_token_loss(logits, batch["targets"], batch["loss_mask"])
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  picked = np.take_along_axis(np.asarray(logp), np.asarray(batch["targets"])[..., None], -1)[..., 0]
  mask = np.asarray(batch["loss_mask"], bool)
  assert float(out["tokens"]) == mask.sum() == 8
  np.testing.assert_allclose(out["loss"], -picked[mask].mean(), rtol=1e-5)
  # Targets outside the mask do not matter.
  other = np.where(mask, batch["targets"], 0)
  np.testing.assert_allclose(mllm.next_token_loss(logits, other, batch["loss_mask"])["loss"],
                             out["loss"], rtol=0)


@pytest.mark.parametrize("kind,depth", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_projectors(kind, depth, rng):
  x = rng.normal(size=(2, 5, 6)).astype(np.float32)
  proj = connectors.Projector(kind, 8)
  params = nn.unbox(proj.init(jax.random.key(0), x))["params"]
  assert len(params) == depth
  y = x
  for i in range(depth):
    if i:
      y = np.asarray(jax.nn.gelu(y, approximate=False))
    y = y @ params[f"linear_{i}"]["kernel"] + params[f"linear_{i}"]["bias"]
  np.testing.assert_allclose(proj.apply({"params": params}, x), y, atol=1e-5)


def test_invalid_configs_are_rejected():
  with pytest.raises(ValueError, match="mlp<N>x_gelu"):
    mllm.MLLMConfig(tower=TINY.tower, llm=TINY.llm,
                    connector=connectors.ProjectorConfig("mlp_gelu"))
  with pytest.raises(ValueError, match="inside the vocabulary"):
    mllm.MLLMConfig(tower=TINY.tower, llm=TINY.llm, image_token_id=3)
  with pytest.raises(ValueError, match="select_feature"):
    towers.ViTTowerConfig(TINY.tower.vit, select_feature="cls")


class PurityTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_apply_is_pure_and_traced_once(self):
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    model = mllm.MLLM(TINY)
    v = nn.unbox(model.init(jax.random.key(0), batch))

    @self.variant
    @chex.assert_max_traces(n=1)
    def run(v, b):
      return model.apply(v, b)[0]

    first, again = run(v, batch), run(v, dict(batch))
    np.testing.assert_array_equal(first, again)
    run(v, dict(batch, images=batch["images"] + 1))


def test_llava15_7b_shapes_without_allocating():
  config = mllm.MLLMConfig(tower=towers.ViTTowerConfig(
      vit.ViTConfig(image_size=336, scan_layers=True)), llm=llm.LLMConfig(scan_layers=True))
  length = 600
  batch = {
      "tokens": jax.ShapeDtypeStruct((1, length), jnp.int32),
      "positions": jax.ShapeDtypeStruct((1, length), jnp.int32),
      "segment_ids": jax.ShapeDtypeStruct((1, length), jnp.int32),
      "images": jax.ShapeDtypeStruct((1, 336, 336, 3), jnp.float32),
  }
  model = mllm.MLLM(config)
  variables = jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)
  params = nn.unbox(variables)["params"]
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  # CLIP ViT-L/14-336's vision model (303,507,456) less its post-LN, which LLaVA never reads.
  assert count(params["tower"]) == 303_507_456 - 2 * 1024
  assert count(params["projector"]) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
  logits, _ = jax.eval_shape(model.apply, variables, batch)
  assert logits.shape == (1, length, 32000)


def test_bfloat16_compute_with_float32_parameters(variables, rng):
  """Mixed precision: bf16 activations over the same f32 parameters track the f32 model."""
  batch = _batch(rng)
  bf16 = mllm.MLLMConfig(
      tower=towers.ViTTowerConfig(dataclasses.replace(TINY.tower.vit, dtype="bfloat16")),
      llm=dataclasses.replace(TINY.llm, dtype="bfloat16"), image_token_id=IMAGE)
  ref, _ = jax.jit(mllm.MLLM(TINY).apply)(variables, batch)
  low, _ = jax.jit(mllm.MLLM(bf16).apply)(variables, batch)
  assert low.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  ref_loss = mllm.next_token_loss(ref, batch["targets"], batch["loss_mask"])["loss"]
  low_loss = mllm.next_token_loss(low, batch["targets"], batch["loss_mask"])["loss"]
  np.testing.assert_allclose(low_loss, ref_loss, rtol=2e-2)
  assert np.mean(np.argmax(low, -1) == np.argmax(ref, -1)) > 0.9
