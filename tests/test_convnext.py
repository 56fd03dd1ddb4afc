"""ConvNeXt against Hugging Face `ConvNextModel`: numerics, checkpoint conversion, layouts."""
import dataclasses
import json

import chex
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mmjax.convert import __main__ as convert_cli
from mmjax.convert import files
from mmjax.convert import hf
from mmjax.convert import layout
from mmjax.convert import mapping
from mmjax.models import convnext

HIDDEN_SIZES = [8, 16, 24, 32]
DEPTHS = [1, 2, 2, 1]


@pytest.fixture(scope="module")
def hf_model() -> transformers.ConvNextModel:
  torch.manual_seed(0)
  config = transformers.ConvNextConfig(hidden_sizes=HIDDEN_SIZES, depths=DEPTHS)
  model = transformers.ConvNextModel(config).eval()
  # At init γ = 1e-6 (blocks ≈ identity), norms are 1/0 and Linear biases 0, so a wrong mapping
  # of any of them would go unnoticed: move every parameter well away from its init value.
  with torch.no_grad():
    for name, p in model.named_parameters():
      big = "layer_scale" in name or "norm" in name
      p.add_(torch.randn_like(p) * (0.5 if big else 0.05))
  return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
  directory = tmp_path_factory.mktemp("hf_convnext")
  hf_model.save_pretrained(directory, safe_serialization=True)
  return directory


@pytest.fixture(scope="module")
def converted(hf_dir):
  return hf.load_hf(hf_dir)


def _images(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, h, w, 3)).astype(np.float32)


def _apply(config, params, images, **kw):
  return convnext.ConvNeXt(config).apply({"params": params}, images, **kw)


_forward = jax.jit(_apply, static_argnums=0)  # One compile per (config, shapes) for all tests.


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_matches_hf(hf_model, converted, size):
  config, params = converted
  images = _images(2, *size)
  with torch.no_grad():
    ref = hf_model(torch.from_numpy(images).permute(0, 3, 1, 2), output_hidden_states=True)
  maps = _forward(config, params, images)
  assert len(maps) == len(ref.hidden_states) - 1 == len(HIDDEN_SIZES)
  for s, (got, want) in enumerate(zip(maps, ref.hidden_states[1:])):
    want = want.permute(0, 2, 3, 1).numpy()
    assert got.shape == want.shape, s
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=f"stage {s}")
  stem = _apply(config, params, images, method="embed")
  np.testing.assert_allclose(stem, ref.hidden_states[0].permute(0, 2, 3, 1).numpy(), atol=1e-4,
                             rtol=0)
  pooled = _apply(config, params, maps[-1], method="pool")
  np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_round_trip(hf_model, hf_dir, converted, tmp_path):
  config, params = converted
  assert config == convnext.ConvNeXtConfig(widths=tuple(HIDDEN_SIZES), depths=tuple(DEPTHS),
                                           final_norm_eps=1e-12)
  _, original = files.read_hf(hf_dir)
  hf.save_hf(tmp_path / "direct", config, params, "ConvNextModel")
  _, exported = files.read_hf(tmp_path / "direct")
  assert exported.keys() == original.keys()
  for name, tensor in original.items():
    np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
  # transformers itself accepts the exported config and weights.
  reloaded = transformers.ConvNextModel.from_pretrained(tmp_path / "direct").state_dict()
  for name, tensor in hf_model.state_dict().items():
    torch.testing.assert_close(reloaded[name], tensor, rtol=0, atol=0)

  # CLI: HF → mmjax (scanned) → HF.
  assert convert_cli.main(["--hf", str(hf_dir), "--out", str(tmp_path / "mm"),
                           "--scan_layers"]) == 0
  mm_config, mm_params, arch = hf.load(tmp_path / "mm")
  assert arch == "ConvNextModel"
  assert mm_config == dataclasses.replace(config, scan_layers=True)
  chex.assert_trees_all_equal(mm_params, layout.scan_layout(params))
  assert convert_cli.main(["--to_hf", "--mmjax", str(tmp_path / "mm"),
                           "--out", str(tmp_path / "back")]) == 0
  _, back = files.read_hf(tmp_path / "back")
  assert back.keys() == original.keys()
  for name, tensor in original.items():
    np.testing.assert_array_equal(back[name], tensor, err_msg=name)


def test_missing_and_unknown_tensors(hf_dir):
  hf_config, tensors = files.read_hf(hf_dir)
  missing = "encoder.stages.2.layers.1.layer_scale_parameter"
  with pytest.raises(ValueError, match=missing):
    hf.from_hf_tensors(hf_config, {k: v for k, v in tensors.items() if k != missing})
  extra = "encoder.stages.1.layers.0.mystery.weight"
  with pytest.raises(ValueError, match=extra):
    hf.from_hf_tensors(hf_config, {**tensors, extra: np.zeros(3, np.float32)})


@pytest.mark.parametrize("layer_scale", [1e-6, 0.0])
def test_rules_cover_the_model_tree(layer_scale):
  hf_config = transformers.ConvNextConfig(
      num_stages=3, hidden_sizes=[8, 16, 24], depths=[2, 1, 1],
      layer_scale_init_value=layer_scale).to_dict()
  conv = hf.converter("ConvNextModel")
  config = conv.config_from_hf(hf_config)
  shapes = jax.eval_shape(convnext.ConvNeXt(config).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
  paths = set(mapping.flatten(nn.unbox(shapes)))
  assert {rule.path for rule in conv.rules(config)} == paths
  assert any("layer_scale" in p for p in paths) == (layer_scale > 0)
  reference = transformers.ConvNextModel(transformers.ConvNextConfig(
      **conv.config_to_hf(config, "ConvNextModel")))
  assert {rule.hf for rule in conv.rules(config)} == set(reference.state_dict())


def _small(**overrides):
  """A two-stage config and random unrolled params (none at its init value), without an init."""
  config = convnext.ConvNeXtConfig(widths=(8, 16), depths=(2, 2), **overrides)
  shapes = jax.eval_shape(convnext.ConvNeXt(config).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        nn.unbox(shapes))
  return config, params


class ApplyTest(chex.TestCase):
  """`apply` is pure and traced once per input shape."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config, cls.params = _small()

  @chex.variants(with_jit=True, without_jit=True)
  def test_pure(self):
    fn = self.variant(lambda p, x: _apply(self.config, p, x))
    images = _images(2, 32, 48)
    first, second = fn(self.params, images), fn(self.params, images)
    chex.assert_trees_all_equal(first, second)
    chex.assert_trees_all_close(first, _forward(self.config, self.params, images), atol=1e-5,
                                rtol=0)

  def test_no_retrace(self):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(p, x):
      return _apply(self.config, p, x)

    for seed in range(3):
      fn(self.params, _images(2, 32, 32, seed))


def test_scan_and_remat_match_loop():
  config, params = _small()
  scanned = layout.scan_layout(params)
  scan_cfg = dataclasses.replace(config, scan_layers=True)
  images = _images(2, 32, 32)
  # The converted scan layout is exactly the tree the scanned model creates.
  init = jax.eval_shape(convnext.ConvNeXt(scan_cfg).init, jax.random.key(0), images)["params"]
  chex.assert_trees_all_equal_shapes(nn.unbox(init), scanned)

  chex.assert_trees_all_close(_forward(scan_cfg, scanned, images),
                              _forward(config, params, images), atol=1e-5, rtol=1e-5)

  def loss(cfg, p):
    return sum(jnp.sum(m ** 2) for m in _apply(cfg, p, images))

  # Remat only changes the backward pass. (Gradients are compared in the scanned layout only:
  # each compile of a model gradient costs seconds on CPU.)
  grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
  chex.assert_trees_all_close(grad(dataclasses.replace(scan_cfg, remat=True), scanned),
                              grad(scan_cfg, scanned), atol=1e-5, rtol=1e-5)


def test_depthwise_conv_matches_grouped_conv():
  rng = np.random.default_rng(0)
  x, kernel, weight = (rng.standard_normal(s).astype(np.float32)
                       for s in [(2, 9, 13, 4), (7, 7, 1, 4), (2, 9, 13, 4)])

  def grouped(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1], precision="highest")

  def value_and_grads(conv):
    return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(conv(x, k) * weight),
                                      argnums=(0, 1)))(x, kernel)

  for conv in (convnext.depthwise_conv, convnext._shifted_conv, convnext._grouped_conv):
    chex.assert_trees_all_close(conv(x, kernel), grouped(x, kernel), atol=1e-5)
    chex.assert_trees_all_close(value_and_grads(conv), value_and_grads(grouped),
                                atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("size,shape", [(4, (2, 10, 13, 3)), (2, (2, 7, 6, 5))])
def test_patch_conv_is_a_valid_strided_convolution(size, shape):
  """Same initial parameters as nn.Conv, same values and gradients, ragged borders dropped."""
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  ours = convnext.PatchConv(8, size, in_axis=None)
  conv = nn.Conv(8, (size, size), strides=(size, size), padding="VALID")
  params = nn.unbox(ours.init(jax.random.key(1), x))
  chex.assert_trees_all_equal(params, conv.init(jax.random.key(1), x))
  params = jax.tree.map(lambda p: p + 0.1, params)  # A non-zero bias too.

  def value_and_grads(module):
    return jax.value_and_grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2), argnums=(0, 1))(
        params, x)

  assert ours.apply(params, x).shape == (2, shape[1] // size, shape[2] // size, 8)
  chex.assert_trees_all_close(value_and_grads(ours), value_and_grads(conv), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("platform,grouped", [("cpu", False), ("cuda", True), ("tpu", True)])
def test_depthwise_conv_lowers_per_platform(platform, grouped):
  """Accelerators get XLA's grouped convolution, the CPU the shifted sum, forward and backward."""
  x, kernel = jnp.ones((1, 9, 9, 4)), jnp.ones((7, 7, 1, 4))
  grad = jax.grad(lambda x, k: jnp.sum(convnext.depthwise_conv(x, k) ** 2), argnums=(0, 1))
  text = jax.export.export(jax.jit(grad), platforms=[platform])(x, kernel).mlir_module()
  assert ("stablehlo.convolution" in text) == grouped
  assert ("feature_group_count = 4" in text) == grouped


def test_full_size_shapes_without_allocating():
  config = convnext.ConvNeXtConfig()  # CLIP-ConvNeXt-L.
  images = jax.ShapeDtypeStruct((1, 768, 768, 3), jnp.float32)
  maps, variables = jax.eval_shape(convnext.ConvNeXt(config).init_with_output,
                                   jax.random.key(0), images)
  assert [m.shape for m in maps] == [(1, 192, 192, 192), (1, 96, 96, 384), (1, 48, 48, 768),
                                     (1, 24, 24, 1536)]
  num_params = sum(np.prod(x.shape) for x in jax.tree.leaves(nn.unbox(variables)))
  assert 195e6 < num_params < 205e6, num_params  # ConvNeXt-L has ~200M parameters.


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axes(scan):
  config = convnext.ConvNeXtConfig(widths=(8, 16), depths=(2, 1), scan_layers=scan)
  variables = jax.eval_shape(convnext.ConvNeXt(config).init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  flat = traverse_util.flatten_dict(variables["params"])
  assert len(flat) == len(jax.tree.leaves(nn.unbox(variables["params"])))
  for path, box in flat.items():
    assert isinstance(box, nn.Partitioned), path
    assert len(box.names) == len(box.value.shape) and any(box.names), (path, box.names)
    in_stack = path[0].startswith("stage_")
    assert (box.names[0] == "layers") == (scan and in_stack), (path, box.names)
  specs = nn.get_partition_spec(variables)["params"]
  kernel = specs["stage_0"]["layers" if scan else "layers_0"]["dw_kernel"]
  assert tuple(kernel) == ("layers",) * scan + ("conv_h", "conv_w", None, "embed")


@pytest.mark.parametrize("kwargs, field", [
    (dict(widths=(8, 16), depths=(1,)), "depths"),
    (dict(widths=(), depths=()), "widths"),
    (dict(widths=(8, 0), depths=(1, 1)), "widths"),
    (dict(act="swish"), "act"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(layer_scale_init=-1.0), "layer_scale_init"),
    (dict(dtype="float64"), "dtype"),
    (dict(param_dtype="int8"), "param_dtype"),
])
def test_invalid_config(kwargs, field):
  with pytest.raises(ValueError, match=field):
    convnext.ConvNeXtConfig(**kwargs)


@pytest.mark.parametrize("override, field", [
    ({"patch_size": 2}, "patch_size"),
    ({"num_channels": 1}, "num_channels"),
    ({"hidden_act": "mish"}, "hidden_act"),
    ({"num_stages": 3}, "num_stages"),
])
def test_invalid_hf_config(hf_dir, override, field):
  hf_config = json.loads((hf_dir / "config.json").read_text())
  with pytest.raises(ValueError, match=field):
    hf.converter("ConvNextModel").config_from_hf({**hf_config, **override})


def test_images_must_be_channels_last(unchecked_shapes):
  config = convnext.ConvNeXtConfig(widths=(8,), depths=(1,))
  with pytest.raises(ValueError, match="channels-last"):
    convnext.ConvNeXt(config).init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
