"""Mixture-of-resolution towers: LLaVA-HR's MR-adapter, Mini-Gemini's patch mining, EAGLE, LEO and
pixel unshuffle — against their definitions and the reference code's tensor layouts."""
import dataclasses
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmjax.models import connectors
from mmjax.models import convnext
from mmjax.models import mr_adapter
from mmjax.models import patch_mining
from mmjax.models import pixel_unshuffle
from mmjax.models import towers
from mmjax.models import vit

VIT = vit.ViTConfig(image_size=32, patch_size=8, width=16, depth=4, num_heads=2, mlp_dim=32)
CONVNEXT = convnext.ConvNeXtConfig(widths=(8, 8, 16, 16), depths=(1, 1, 1, 1))


def _init_apply(tower, images, **apply_kw):
  module = towers.tower_for(tower)
  params = nn.unbox(jax.jit(module.init)(jax.random.key(0), images))
  return module, params, jax.jit(module.apply)(params, images, **apply_kw)


def test_pixel_unshuffle_matches_its_definition(rng):
  x = rng.standard_normal((2, 6, 4, 3)).astype(np.float32)
  out = np.asarray(pixel_unshuffle.pixel_unshuffle(jnp.asarray(x), 2))
  assert out.shape == (2, 3, 2, 12)
  for a in range(3):
    for b in range(2):
      expected = np.concatenate([x[:, 2 * a, 2 * b], x[:, 2 * a, 2 * b + 1],
                                 x[:, 2 * a + 1, 2 * b], x[:, 2 * a + 1, 2 * b + 1]], -1)
      np.testing.assert_array_equal(out[:, a, b], expected)
  with pytest.raises(ValueError, match="does not split into 4x4"):
    pixel_unshuffle.pixel_unshuffle(jnp.asarray(x), 4)


@pytest.mark.parametrize("high_side", [2, 4, 8])
def test_grid_alignment_matches_the_reference_ops(rng, high_side):
  """Smaller maps: bilinear with align_corners=True; larger: average pooling, kernel = stride."""
  x = rng.standard_normal((2, high_side, high_side, 5)).astype(np.float32)
  ours = np.asarray(mr_adapter.align_to_grid(jnp.asarray(x), (4, 4)))
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  if high_side < 4:
    ref = F.interpolate(t, size=(4, 4), mode="bilinear", align_corners=True)
  else:
    ref = F.avg_pool2d(t, high_side // 4, high_side // 4)
  np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)
  with pytest.raises(ValueError, match="cannot be average-pooled"):
    mr_adapter.check_alignment(6, 4)


@pytest.mark.parametrize("gate", mr_adapter.GATES)
def test_mr_adapter_is_the_identity_at_init_and_its_gate_stays_in_range(rng, gate):
  tokens = jnp.asarray(rng.standard_normal((2, 16, 12)), jnp.float32)
  high = jnp.asarray(rng.standard_normal((2, 2, 2, 10)), jnp.float32)
  adapter = mr_adapter.MRAdapter(mr_adapter.MRAdapterConfig(gate=gate))
  params = nn.unbox(adapter.init(jax.random.key(0), tokens, (4, 4), high))
  chex.assert_trees_all_equal(adapter.apply(params, tokens, (4, 4), high), tokens)
  # Trained weights: the zero inits replaced and everything scaled up, so the gate saturates.
  big = jax.tree.map(lambda p: 50.0 * jax.random.normal(jax.random.key(1), p.shape), params)
  out, state = adapter.apply(big, tokens, (4, 4), high, mutable="intermediates")
  g = np.asarray(state["intermediates"]["gate"][0])
  assert g.shape == (2, 1 if gate == "scalar" else 12)
  assert np.all(np.abs(g) <= 1.0) and np.abs(g).max() > 0.5  # One tanh: saturates at ±1.
  assert not np.allclose(out, tokens)


def test_llava_hr_tower_equals_its_vit_at_init(rng):
  """With every adapter the identity, the tower's ViT path is the ViT alone (class token dropped
  before the blocks) on the image resized with align_corners=True; the final features are
  Linear(vit) + Linear(aligned ConvNeXt). The authors' whole tower: test_tower_references.py."""
  cfg = towers.LLaVAHRTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=128)
  assert cfg.adapter_positions == (1, 2, 3) and cfg.tower_vit.layer_groups == (1, 1, 1, 1)
  images = jnp.asarray(rng.standard_normal((2, 128, 128, 3)), jnp.float32)
  _, params, out = _init_apply(cfg, images)
  assert out.shape == (2, cfg.num_tokens(128, 128), VIT.width) == (2, 16, 16)
  p = params["params"]
  low = F.interpolate(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2), size=(32, 32),
                      mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
  hidden = vit.ViT(cfg.tower_vit).apply({"params": p["vit"]}, jnp.asarray(low),
                                        method="hidden_states")[-1]
  assert hidden.shape == (2, 16, 16)
  high = convnext.ConvNeXt(CONVNEXT).apply({"params": p["convnext"]}, images)[-1]
  expected = (hidden @ p["vit_out"]["kernel"] + p["vit_out"]["bias"]
              + high.reshape(2, 16, -1) @ p["convnext_out"]["kernel"] + p["convnext_out"]["bias"])
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_llava_hr_rejects_bad_placements():
  with pytest.raises(ValueError, match="adapter_after"):
    towers.LLaVAHRTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=128, adapter_after=(2, 4))
  with pytest.raises(ValueError, match="cannot be average-pooled"):
    towers.LLaVAHRTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=192)
  with pytest.raises(ValueError, match="vit_input=36 is not a multiple"):
    towers.LLaVAHRTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=128, vit_input=36)
  with pytest.raises(ValueError, match="at least the ViT's input side 256"):
    towers.LLaVAHRTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=128, vit_input=256)


def _reference_mining(tokens, high, params):
  """The authors' `unified_resampler`, transcribed in torch (channels-first aux map)."""
  def proj(name, x):
    x = F.layer_norm(x, x.shape[-1:], torch.from_numpy(np.array(params[f"{name}_norm"]["scale"])),
                     torch.from_numpy(np.array(params[f"{name}_norm"]["bias"])), eps=1e-5)
    return x @ torch.from_numpy(np.array(params[name]["kernel"])) + torch.from_numpy(
        np.asarray(params[name]["bias"]))
  images = torch.from_numpy(np.array(tokens))
  aux = torch.from_numpy(np.array(high)).permute(0, 3, 1, 2)
  patch_num = int(images.shape[1] ** 0.5)
  patch_size = aux.shape[-1] // patch_num
  aux = aux.permute(0, 2, 3, 1).reshape(len(aux), patch_num, patch_size, patch_num, patch_size,
                                        aux.shape[1])
  aux = aux.permute(0, 1, 3, 2, 4, 5).reshape(len(aux), patch_num ** 2, patch_size ** 2,
                                              aux.shape[-1])
  q, k, v = proj("query", images), proj("key", aux), proj("value", aux)
  att = q[:, :, None] @ (k.transpose(-1, -2) / (k.shape[-1] ** 0.5))
  return images + (att.nan_to_num().softmax(-1) @ v).mean(2)


def test_patch_mining_matches_the_reference_and_is_local(rng):
  tokens = jnp.asarray(rng.standard_normal((2, 9, 8)), jnp.float32)
  high = jnp.asarray(rng.standard_normal((2, 12, 12, 6)), jnp.float32)
  mining = patch_mining.PatchInfoMining()
  params = nn.unbox(mining.init(jax.random.key(0), tokens, (3, 3), high))
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
  out = mining.apply(params, tokens, (3, 3), high)
  np.testing.assert_allclose(out, _reference_mining(tokens, high, params["params"]).numpy(),
                             atol=1e-5)
  # Token 4 (row 1, col 1) owns pixels [4:8, 4:8]; change everything else.
  outside = np.ones((12, 12), bool)
  outside[4:8, 4:8] = False
  perturbed = high + jnp.asarray(outside[None, :, :, None] * rng.standard_normal(high.shape),
                                 jnp.float32)
  moved = mining.apply(params, tokens, (3, 3), perturbed)
  np.testing.assert_array_equal(moved[:, 4], out[:, 4])
  assert not np.allclose(moved[:, 3], out[:, 3])


@pytest.mark.parametrize("hd", [False, True])
def test_mini_gemini_shapes_and_token_order(rng, hd):
  cfg = towers.MiniGeminiTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=128 if hd else 64,
                                     hd=hd)
  images = jnp.asarray(rng.standard_normal((2, cfg.image_size, cfg.image_size, 3)), jnp.float32)
  _, _, out = _init_apply(cfg, images)
  assert out.shape == (2, cfg.num_tokens(0, 0), VIT.width) == (2, 16 * (5 if hd else 1), 16)
  assert cfg.region == 4
  if hd:
    with pytest.raises(ValueError, match="must split"):
      towers.MiniGeminiTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=96, hd=True)


@pytest.mark.parametrize("fusion", ["channel", "sequence"])
def test_eagle_shapes(rng, fusion):
  specs = (towers.EncoderSpec(vit=VIT, image_size=32, select=-2),
           towers.EncoderSpec(convnext=CONVNEXT, image_size=64, select=-1))
  cfg = towers.EagleTowerConfig(encoders=specs, image_size=64, grid=3, fusion=fusion)
  images = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
  _, _, out = _init_apply(cfg, images)
  assert out.shape == (2, cfg.num_tokens(0, 0), cfg.width)
  assert out.shape == ((2, 9, 16 + 16) if fusion == "channel" else (2, 18, 16))


def test_leo_interleaves_tokens_of_its_encoders(rng):
  specs = (towers.EncoderSpec(vit=VIT, image_size=32, select=-1),
           towers.EncoderSpec(convnext=CONVNEXT, image_size=64, select=1))
  cfg = towers.LEOTowerConfig(encoders=specs, image_size=64, grid=2, out_width=24)
  images = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
  module, params, out = _init_apply(cfg, images)
  assert out.shape == (2, 8, 24)
  # Zeroing encoder 1's output projection zeroes exactly the odd positions.
  p = jax.tree.map(lambda x: x, params)  # A copy whose dicts can be edited.
  p["params"]["project_1_out"] = jax.tree.map(jnp.zeros_like, p["params"]["project_1_out"])
  zeroed = jax.jit(module.apply)(p, images)
  np.testing.assert_array_equal(zeroed[:, 1::2], 0.0)
  np.testing.assert_allclose(zeroed[:, 0::2], out[:, 0::2], atol=1e-6)
  with pytest.raises(ValueError, match="does not pixel-unshuffle"):
    towers.LEOTowerConfig(encoders=specs, image_size=64, grid=3)


def test_every_tower_parameter_has_known_logical_axes(rng):
  from mmjax import sharding
  specs = (towers.EncoderSpec(vit=VIT, image_size=32), towers.EncoderSpec(
      convnext=CONVNEXT, image_size=64))
  for cfg in (towers.LLaVAHRTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=128),
              towers.MiniGeminiTowerConfig(vit=VIT, convnext=CONVNEXT, image_size=64),
              towers.EagleTowerConfig(encoders=specs, image_size=64, grid=4),
              towers.LEOTowerConfig(encoders=specs, image_size=64, grid=2, out_width=8)):
    module = towers.tower_for(cfg)
    images = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), images)
    assert set(abstract) == {"params"}
    leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
    sharding.check_names(abstract)


def test_encoder_spec_validation():
  with pytest.raises(ValueError, match="exactly one"):
    towers.EncoderSpec()
  with pytest.raises(ValueError, match="not a multiple"):
    towers.EncoderSpec(vit=VIT, image_size=30)
  with pytest.raises(ValueError, match="stages"):
    towers.EncoderSpec(convnext=CONVNEXT, select=4)
  with pytest.raises(ValueError, match="fusion"):
    towers.EagleTowerConfig(encoders=(towers.EncoderSpec(vit=VIT, image_size=32),), fusion="x")
  assert dataclasses.replace(towers.EncoderSpec(convnext=CONVNEXT, image_size=64, select=2)).grid == 4


def test_onevision_tower_maps_the_projected_crops_by_the_plan(rng):
  """Base image tokens first (its projected ViT features), then every plan slot: the weighted
  mix of the projected crop tokens it names, the learned newline token, or zeros (padding)."""
  config = towers.OneVisionTowerConfig(vit=VIT, select_layer=-1, out_width=24, max_crops_in=3,
                                       budget=6)
  assert (config.grid, config.width, config.max_tokens) == (4, 24, 22)
  crops = jnp.asarray(rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32))
  index = rng.integers(0, 48, (2, 6, 4)).astype(np.int32)
  weight = rng.uniform(size=(2, 6, 4)).astype(np.float32)
  kind = np.array([[1, 1, 2, 1, 2, 0], [1, 2, 1, 1, 1, 2]], np.int32)
  module = towers.tower_for(config)
  params = nn.unbox(jax.jit(module.init)(jax.random.key(0), crops, index, weight, kind))
  out = np.asarray(jax.jit(module.apply)(params, crops, index, weight, kind))
  assert out.shape == (2, 22, 24)
  p = params["params"]
  hidden = vit.ViT(VIT).apply({"params": p["vit"]}, crops.reshape(6, 32, 32, 3),
                              method="hidden_states")
  feats = hidden[-1][:, 1:]
  projected = np.asarray(connectors.Projector("mlp2x_gelu", 24).apply(
      {"params": p["projector"]}, feats)).reshape(2, 48, 24)
  np.testing.assert_allclose(out[:, :16], projected[:, :16], atol=1e-5)
  for b in range(2):
    for t in range(6):
      expected = {0: np.zeros(24), 2: np.asarray(p["image_newline"]),
                  1: np.einsum("k,kd->d", weight[b, t], projected[b, index[b, t]])}[kind[b, t]]
      np.testing.assert_allclose(out[b, 16 + t], expected, atol=1e-5, err_msg=str((b, t)))
  with pytest.raises(ValueError, match="identity projector needs"):
    towers.OneVisionTowerConfig(vit=VIT, projector="identity", out_width=24)


def test_xcomposer_tower_lays_out_merged_tokens_by_the_plan(rng):
  """Every plan slot is the 2×2-merged ViT token it names, the newline (sub_GN), the separator
  (glb_GN) or zeros (padding); newline and separator start at zero, as the authors' do."""
  config = towers.XComposerTowerConfig(vit=VIT, hd_num=2, budget=7)
  assert (config.grid, config.width) == (2, 64)
  crops = jnp.asarray(rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32))
  index = rng.integers(0, 12, (2, 7)).astype(np.int32)
  kind = np.array([[1, 1, 2, 3, 1, 2, 0], [1, 2, 3, 1, 1, 2, 1]], np.int32)
  module = towers.tower_for(config)
  params = nn.unbox(jax.jit(module.init)(jax.random.key(0), crops, index, kind))
  p = params["params"]
  assert not np.any(p["sub_GN"]) and not np.any(p["glb_GN"])
  p = {**p, "sub_GN": jnp.ones(64), "glb_GN": -jnp.ones(64)}
  out = np.asarray(jax.jit(module.apply)({"params": p}, crops, index, kind))
  assert out.shape == (2, 7, 64)
  hidden = vit.ViT(VIT).apply({"params": p["vit"]}, crops.reshape(6, 32, 32, 3),
                              method="hidden_states")
  merged = np.asarray(pixel_unshuffle.pixel_unshuffle(
      hidden[-1][:, 1:].reshape(6, 4, 4, 16), 2)).reshape(2, 12, 64)
  for b in range(2):
    for t in range(7):
      expected = {0: np.zeros(64), 1: merged[b, index[b, t]], 2: np.ones(64),
                  3: -np.ones(64)}[kind[b, t]]
      np.testing.assert_allclose(out[b, t], expected, atol=1e-5, err_msg=str((b, t)))
  with pytest.raises(ValueError, match="merge needs it even"):
    towers.XComposerTowerConfig(vit=dataclasses.replace(VIT, image_size=24))


def test_internvl_tiles_are_encoded_independently_and_in_order(rng):
  """Each tile's tokens depend on that tile only (one ViT per tile, unshuffle within it), in tile
  order; the tokens equal the unshuffled ViT features of the tile, layer-normalised."""
  config = towers.InternVLTowerConfig(vit=VIT, max_num=2)
  assert (config.max_tiles, config.tokens_per_tile, config.width) == (3, 4, 64)
  tiles = jnp.asarray(rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32))
  module, params, out = _init_apply(config, tiles)
  assert out.shape == (2, 12, 64)
  changed = tiles.at[1, 2].set(0.0)
  out2 = module.apply(params, changed)
  np.testing.assert_allclose(out2[:, :8], out[:, :8], atol=1e-6)
  np.testing.assert_allclose(out2[0], out[0], atol=1e-6)
  assert not np.allclose(out2[1, 8:], out[1, 8:])
  hidden = vit.ViT(VIT).apply({"params": params["params"]["vit"]}, tiles[0, 1:2],
                              method="hidden_states")[-1][:, 1:]
  feats = pixel_unshuffle.pixel_unshuffle(hidden.reshape(1, 4, 4, 16), 2).reshape(4, 64)
  mean, var = feats.mean(-1, keepdims=True), feats.var(-1, keepdims=True)
  np.testing.assert_allclose(out[0, 4:8], (feats - mean) / np.sqrt(var + 1e-5), atol=1e-4)
  with pytest.raises(ValueError, match="needs it even"):
    towers.InternVLTowerConfig(vit=dataclasses.replace(VIT, image_size=24))


def _compressor_reference(features, forward_type, query_w, query_b, key_w, key_b):
  """The authors' `DynamicCompressor.forward` (Oryx perceiver.py), transcribed in torch:
  features [T, H·W, C] of an H × W grid → pooled tokens [T, H·W / r², C]."""
  t, n, c = features.shape
  h = w = int(math.sqrt(n))
  x = features.view(t, h, w, c).permute(0, 3, 1, 2)
  r = {"image": 1, "video": 2, "video_long": 4}[forward_type]
  pooled = F.avg_pool2d(x, r, r) if r > 1 else x
  regions = x.reshape(t, c, h // r, r, w // r, r).permute(0, 2, 4, 3, 5, 1).reshape(
      t, h // r * (w // r), r * r, c)
  pooled = pooled.flatten(2).permute(0, 2, 1)
  m = pooled.shape[1]
  query = (pooled @ query_w.T + query_b).reshape(t * m, -1)
  key = (regions @ key_w.T + key_b).reshape(t * m, r * r, -1)
  value = regions.reshape(t * m, r * r, c)
  attn = query[:, None] @ (key.transpose(-1, -2) / key.shape[-1] ** 0.5)
  out = (attn.nan_to_num().softmax(-1) @ value).mean(1).reshape(t, m, c)
  return pooled + out


@pytest.mark.parametrize("forward_type,ratio", [("image", 1), ("video", 2), ("video_long", 4)])
def test_dynamic_compressor_matches_the_reference(rng, forward_type, ratio):
  from mmjax.data import patches as patches_lib
  from mmjax.models import dynamic_compressor
  grid, c = 8, 6
  features = rng.standard_normal((2, grid * grid, c)).astype(np.float32)
  order = patches_lib.vision_positions(grid, grid, ratio)
  regions = features[:, order[:, 0] * grid + order[:, 1]]  # Each region's tokens contiguous.
  module = dynamic_compressor.DynamicCompressor(ratio, mid=4)
  params = nn.unbox(module.init(jax.random.key(0), regions))["params"]
  ours = np.asarray(module.apply({"params": params}, regions))
  weights = [torch.from_numpy(np.asarray(params[n][k]).T.copy() if k == "kernel"
                              else np.asarray(params[n][k]).copy())
             for n in ("query", "key") for k in ("kernel", "bias")]
  expected = _compressor_reference(torch.from_numpy(features), forward_type, *weights).numpy()
  assert ours.shape == (2, grid * grid // ratio ** 2, c)
  np.testing.assert_allclose(ours, expected, atol=1e-5)
  if ratio == 1:  # A region of one token: the output is twice the input, as the authors' is.
    np.testing.assert_allclose(ours, 2 * features, atol=1e-6)


def test_oryx_7b_tower_shapes_without_allocating():
  """configs/oryx.py at size=7b: SigLIP-so400m/16 with its 128 × 128 position table, the
  compressor and the two-view projector into a 4096-wide LLM, as the authors' Oryx-7B."""
  import pathlib
  from mmjax import config_args
  from mmjax import sharding
  from mmjax.training import build
  c = config_args.get_config(pathlib.Path(__file__).parents[1] / "configs" / "oryx.py",
                             "size=7b")
  config = build.model_config(c, 32000).tower
  module = towers.tower_for(config)
  inputs = config.policy(c.data.aspect).blank()
  spec = [jax.ShapeDtypeStruct((1, *inputs[k].shape), inputs[k].dtype) for k in config.INPUTS]
  variables = jax.eval_shape(module.init, jax.random.key(0), *spec)
  sharding.check_names(variables)
  leaves = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(leaf, nn.Partitioned) for leaf in leaves)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(variables)))
  d, mlp, depth = 1152, 4304, 27
  block = 4 * d * d + 4 * d + 2 * d * mlp + mlp + d + 4 * d
  siglip = 3 * 16 * 16 * d + d + 128 * 128 * d + depth * block
  compressor = 2 * (d * 256 + 256)
  projector = d * 4096 + 4096 + 4096 * 4096 + 4096 + 4 * 4096
  assert count == siglip + compressor + projector
  out = jax.eval_shape(module.apply, variables, *spec)
  assert out.shape == (1, config.budget, 4096)
