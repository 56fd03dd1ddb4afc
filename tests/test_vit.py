"""ViT: parity with Hugging Face `CLIPVisionModel`, its converter, and the model's invariants."""
import dataclasses
import json
import pathlib

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import numpy as st_numpy

from mmjax.convert import __main__ as cli
from mmjax.convert import clip_vision
from mmjax.convert import files
from mmjax.convert import hf
from mmjax.convert import layout
from mmjax.models import interpolate
from mmjax.models import vit

ACTS = ("quick_gelu", "gelu")
# Native 28x28 (4x4 grid, the table as stored) and a non-square 3x5 grid, which shrinks one axis of
# the table and grows the other, so the bicubic resampling of the position table is exercised.
SIZES = ((28, 28), (21, 35))
TOL = 1e-4


def tiny_config(**overrides) -> vit.ViTConfig:
  return vit.ViTConfig(**{**dict(image_size=28, patch_size=7, width=32, depth=4, num_heads=4,
                                 mlp_dim=64), **overrides})


def random_params(config: vit.ViTConfig, seed: int = 0) -> dict:
  """Random parameters in the unrolled layout, drawn with numpy: initialising with jax.random costs
  seconds of compilation on CPU."""
  rng = np.random.default_rng(seed)
  config = dataclasses.replace(config, scan_layers=False)
  shapes = jax.eval_shape(vit.ViT(config).init, jax.random.key(0),
                          jnp.zeros((1, config.image_size, config.image_size, 3)))
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                      nn.unbox(shapes)["params"])


def images(h: int, w: int, batch: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, h, w, 3)).astype(np.float32)


def run(config: vit.ViTConfig, params, x) -> dict[str, np.ndarray]:
  out = jax.jit(vit.ViT(config).apply)({"params": params}, x)
  return jax.tree.map(np.asarray, out)


def assert_close(actual, expected, tol=TOL):
  chex.assert_trees_all_close(actual, expected, atol=tol, rtol=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[pathlib.Path, transformers.CLIPVisionModel]]:
  """A saved random-init `CLIPVisionModel` per activation, with every parameter moved off its
  initial value (LayerNorms at 1/0 and zero biases would hide transposed or misrouted tensors)."""
  out = {}
  for seed, act in enumerate(ACTS):
    torch.manual_seed(seed)
    hf_config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        image_size=28, patch_size=7, hidden_act=act)
    model = transformers.CLIPVisionModel(hf_config).eval()
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "norm" in name or name.endswith("bias") or "class_embedding" in name:
          p.add_(0.5 * torch.randn_like(p))
        if "position_embedding" in name:
          p.mul_(20.0)  # Strong positions, so a wrong resampling shows.
    directory = tmp_path_factory.mktemp(f"clip_{act}")
    model.save_pretrained(directory)
    out[act] = (directory, model)
  return out


@pytest.fixture(scope="module")
def checkpoint(checkpoints):
  return checkpoints["quick_gelu"][0]


@pytest.fixture(scope="module")
def reference(checkpoint):
  """The converted quick_gelu model's outputs on a non-square input: what every layout must give."""
  config, params = hf.load_hf(checkpoint)
  x = images(21, 35)
  return x, run(config, params, x)


# --- Parity with Hugging Face. ---


@pytest.mark.parametrize("act", ACTS)
def test_matches_hf_clip_vision_model(checkpoints, act):
  directory, model = checkpoints[act]
  config, params = hf.load_hf(directory)
  assert config.act == act
  for h, w in SIZES:
    x = images(h, w)
    with torch.no_grad():
      ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True,
                  interpolate_pos_encoding=(h, w) != (28, 28))
    out = run(config, params, x)
    expected = np.stack([t.numpy() for t in ref.hidden_states])
    assert out["hidden_states"].shape == (5, 2, 1 + (h // 7) * (w // 7), 32)
    assert_close(out["hidden_states"], expected)
    assert_close(out["pooled"], ref.pooler_output.numpy())


@pytest.mark.parametrize("mode", interpolate.MODES)
@pytest.mark.parametrize("align_corners,antialias", [(False, False), (True, False), (False, True)])
def test_resize_matches_torch(mode, align_corners, antialias):
  """Every mode torch offers for these kernels; antialias=True (LLaVA-HR's and EAGLE's position
  tables) uses another cubic and drops taps outside the input, growing as well as shrinking."""
  rng = np.random.default_rng(0)
  for (h, w), size in [((4, 4), (9, 7)), ((9, 7), (4, 6)), ((24, 24), (32, 16)),
                       ((5, 6), (1, 3)), ((1, 2), (3, 5)), ((6, 6), (6, 6))]:
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode=mode,
        align_corners=align_corners, antialias=antialias).permute(0, 2, 3, 1).numpy()
    actual = np.asarray(interpolate.resize(jnp.asarray(x), size, mode, align_corners, antialias))
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0, err_msg=f"{(h, w)}→{size}")


def test_antialiased_cubic_differs_from_the_plain_one_when_growing():
  plain = interpolate.interpolation_matrix(24, 32, "bicubic")
  smooth = interpolate.interpolation_matrix(24, 32, "bicubic", antialias=True)
  assert np.abs(plain - smooth).max() > 1e-2


def test_interpolation_rejects_unknown_mode(unchecked_shapes):
  with pytest.raises(ValueError, match="nearest.*bicubic"):
    interpolate.interpolation_matrix(4, 8, "nearest")
  with pytest.raises(ValueError, match="align_corners=False only"):
    interpolate.interpolation_matrix(4, 8, "bilinear", align_corners=True, antialias=True)


# --- Converter. ---


def test_rules_cover_every_saved_tensor(checkpoint):
  _, tensors = files.read_hf(checkpoint)
  assert not any("position_ids" in k for k in tensors)  # A non-persistent buffer in 5.x.
  config, _ = hf.load_hf(checkpoint)
  names = [r.hf for r in clip_vision.rules(config)]
  assert len(names) == len(set(names))
  assert set(names) == set(tensors)


def test_config_from_hf(checkpoint):
  hf_config = json.loads((checkpoint / "config.json").read_text())
  config = clip_vision.config_from_hf(hf_config)
  assert config == tiny_config(act="quick_gelu")
  full = {"architectures": ["CLIPModel"], "text_config": {"hidden_size": 8},
          "vision_config": {**hf_config, "image_size": [28, 28]}}
  assert clip_vision.config_from_hf(full) == config
  # Keys left out take transformers' defaults (ViT-B/32).
  base = clip_vision.config_from_hf({"architectures": ["CLIPVisionModel"]})
  assert (base.width, base.depth, base.patch_size, base.act) == (768, 12, 32, "quick_gelu")
  for key, value, match in [("num_channels", 1, "num_channels=1.*valid: 3"),
                            ("hidden_act", "relu", "hidden_act='relu'.*gelu"),
                            ("image_size", [28, 35], "not square")]:
    with pytest.raises(ValueError, match=match):
      clip_vision.config_from_hf({**hf_config, key: value})


def test_config_to_hf_is_accepted_by_transformers():
  config = tiny_config(act="gelu", layer_groups=(1, 3))
  hf_config = clip_vision.config_to_hf(config, "CLIPVisionModel")
  assert hf_config["architectures"] == ["CLIPVisionModel"]
  parsed = transformers.CLIPVisionConfig(**hf_config)
  assert parsed.model_type == "clip_vision_model"
  assert clip_vision.config_from_hf(parsed.to_dict()) == tiny_config(act="gelu")
  with pytest.raises(ValueError, match="patch_bias"):
    clip_vision.config_to_hf(tiny_config(patch_bias=True), "CLIPVisionModel")
  with pytest.raises(ValueError, match="act='silu'"):
    clip_vision.config_to_hf(tiny_config(act="silu"), "CLIPVisionModel")
  with pytest.raises(ValueError, match="use_cls"):
    clip_vision.rules(tiny_config(use_cls=False))


def test_missing_and_unknown_tensors_are_named(checkpoint):
  hf_config, tensors = files.read_hf(checkpoint)
  missing = dict(tensors)
  del missing["encoder.layers.2.mlp.fc1.bias"]
  with pytest.raises(ValueError, match=r"missing.*encoder\.layers\.2\.mlp\.fc1\.bias"):
    hf.from_hf_tensors(hf_config, missing)
  extra = {**tensors, "encoder.layers.4.mlp.fc1.bias": tensors["encoder.layers.2.mlp.fc1.bias"]}
  with pytest.raises(ValueError, match=r"unknown.*encoder\.layers\.4\.mlp\.fc1\.bias"):
    hf.from_hf_tensors(hf_config, extra)


def test_prefixed_checkpoints_convert(checkpoint):
  hf_config, tensors = files.read_hf(checkpoint)
  prefixed = {clip_vision.PREFIX + k: v for k, v in tensors.items()}
  _, params = hf.from_hf_tensors(hf_config, prefixed)
  _, expected = hf.from_hf_tensors(hf_config, tensors)
  chex.assert_trees_all_equal(params, expected)
  with pytest.raises(ValueError, match="'pre_layrnorm.bias' appears both"):
    hf.from_hf_tensors(hf_config, {**tensors, "vision_model.pre_layrnorm.bias": np.zeros(1)})


def test_full_clip_model_converts_to_its_vision_tower(tmp_path):
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, vocab_size=50, bos_token_id=0, eos_token_id=1),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, image_size=28, patch_size=7),
      projection_dim=8)
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(tmp_path / "clip")
  mm_config, params = hf.load_hf(tmp_path / "clip")
  x = images(28, 28)
  with torch.no_grad():
    ref = model.vision_model(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True)
  ours = run(mm_config, params, x)
  assert_close(ours["hidden_states"][-1], ref.last_hidden_state.numpy())
  cli.main(["--hf", str(tmp_path / "clip"), "--out", str(tmp_path / "mm")])
  assert json.loads((tmp_path / "mm" / "config.json").read_text())["architecture"] == \
      "CLIPVisionModel"
  cli.main(["--to_hf", "--mmjax", str(tmp_path / "mm"), "--out", str(tmp_path / "hf")])
  vision = transformers.CLIPVisionModel.from_pretrained(tmp_path / "hf")
  original = model.vision_model.state_dict()
  exported = {k.removeprefix(clip_vision.PREFIX): v for k, v in vision.state_dict().items()}
  assert exported.keys() == original.keys()
  for name, value in exported.items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)


@pytest.mark.parametrize("overrides", [{}, {"scan_layers": True, "layer_groups": (1, 3)}])
def test_save_hf_reproduces_every_tensor(checkpoint, tmp_path, overrides):
  config, params = hf.load_hf(checkpoint, **overrides)
  hf.save_hf(tmp_path, config, params, "CLIPVisionModel")
  _, original = files.read_hf(checkpoint)
  _, saved = files.read_hf(tmp_path)
  assert set(saved) == set(original)
  for name, value in original.items():
    assert saved[name].dtype == value.dtype, name
    np.testing.assert_array_equal(saved[name], value, err_msg=name)
  model, info = transformers.CLIPVisionModel.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info  # No missing, unexpected or mismatched tensors.
  assert model.config.hidden_act == "quick_gelu"


def test_cli_import_and_export(checkpoint, tmp_path):
  mmjax_dir, hf_dir = str(tmp_path / "mmjax"), str(tmp_path / "hf")
  assert cli.main(["--hf", str(checkpoint), "--out", mmjax_dir, "--scan_layers"]) == 0
  config, params, arch = hf.load(mmjax_dir)
  assert arch == "CLIPVisionModel"
  assert config == tiny_config(scan_layers=True)
  assert params["blocks_0"]["layers"]["attn"]["q"]["kernel"].shape == (4, 32, 4, 8)
  assert cli.main(["--to_hf", "--mmjax", mmjax_dir, "--out", hf_dir]) == 0
  original = st_numpy.load_file(str(checkpoint / "model.safetensors"))
  exported = st_numpy.load_file(f"{hf_dir}/model.safetensors")
  chex.assert_trees_all_equal(exported, original)


# --- Model invariants. ---


class PurityTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_outputs_with_and_without_jit(self):
    config = tiny_config()
    params = random_params(config)
    fn = self.variant(lambda p, x: vit.ViT(config).apply({"params": p}, x))
    x = images(21, 35)
    out = fn(params, x)
    assert_close(out, run(config, params, x), tol=1e-5)
    assert_close(fn(params, x), out, tol=0)  # Deterministic: same inputs, same outputs.

  def test_no_retrace_for_same_shapes(self):
    config = tiny_config()
    model = vit.ViT(config)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(p, x):
      return model.apply({"params": p}, x)

    fn(random_params(config, seed=1), images(28, 28, seed=1))
    fn(random_params(config, seed=2), images(28, 28, seed=2))


@pytest.mark.parametrize("overrides", [
    {"scan_layers": True},
    {"remat": True},
    {"layer_groups": (2, 2)},
    {"layer_groups": (1, 3), "scan_layers": True, "remat": True},
], ids=lambda o: ",".join(o))
def test_layouts_give_the_same_outputs(checkpoint, reference, overrides):
  """Scanned (params stacked by `layout.scan_layout`), rematerialised and grouped blocks all
  compute what one unrolled group does."""
  x, expected = reference
  config, params = hf.load_hf(checkpoint, **{**overrides, "scan_layers": False})
  if overrides.get("scan_layers"):
    params = layout.scan_layout(params)
    config = dataclasses.replace(config, scan_layers=True)
    last = len(config.groups) - 1
    assert params[f"blocks_{last}"]["layers"]["mlp"]["fc1"]["kernel"].shape == (
        config.groups[last], 32, 64)
  assert_close(run(config, params, x), expected, tol=1e-5)


def test_embed_and_run_group_compose_to_call(checkpoint, reference):
  """A tower driving the groups itself (to edit tokens between them) sees the same states."""
  x, expected = reference
  config, params = hf.load_hf(checkpoint, layer_groups=(1, 2, 1))

  def manual(model: vit.ViT, images):
    tokens = model.embed(images)
    hidden = [tokens[None]]
    for g in range(len(config.groups)):
      tokens, h = model.run_group(tokens, g)
      hidden.append(h)
    return tokens, jnp.concatenate(hidden)

  tokens, hidden = jax.jit(nn.apply(manual, vit.ViT(config)))({"params": params}, x)
  assert_close(np.asarray(hidden), expected["hidden_states"], tol=1e-5)
  assert_close(np.asarray(tokens), expected["hidden_states"][-1], tol=1e-5)
  embedded = vit.ViT(config).apply({"params": params}, x, method=vit.ViT.embed)
  assert_close(np.asarray(embedded), expected["hidden_states"][0], tol=1e-5)


@pytest.mark.parametrize("size,tokens", [(336, 577), (448, 1025)])
def test_clip_vit_l14_336_shapes_without_allocating(size, tokens):
  config = vit.ViTConfig(image_size=336, patch_size=14, width=1024, depth=24, num_heads=16,
                         mlp_dim=4096)
  model = vit.ViT(config)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
  assert out["hidden_states"].shape == (25, 2, tokens, 1024)
  assert out["pooled"].shape == (2, 1024)
  assert variables["params"]["pos_embedding"].value.shape == (577, 1024)


@pytest.mark.parametrize("scan", (False, True))
def test_every_parameter_has_logical_axes(scan):
  config = tiny_config(scan_layers=scan, layer_groups=(1, 3))
  variables = jax.eval_shape(vit.ViT(config).init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
  flat = flax.traverse_util.flatten_dict(variables["params"])
  # Patch kernel, class token, positions, two norms; 16 per block, or per scanned group.
  assert len(flat) == 7 + 16 * (len(config.groups) if scan else config.depth)
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim, path
    assert any(leaf.names), path
    assert (leaf.names[0] == "layers") == ("layers" in path), path


def test_bfloat16_compute(checkpoint, reference):
  x, expected = reference
  config, params = hf.load_hf(checkpoint, dtype="bfloat16")
  out = run(config, params, x)
  assert out["hidden_states"].dtype == jnp.bfloat16
  assert out["pooled"].dtype == jnp.bfloat16
  scale = np.abs(expected["hidden_states"]).max()
  error = np.abs(out["hidden_states"].astype(np.float32) - expected["hidden_states"]).max()
  assert error < 0.05 * scale


def test_rejects_input_not_a_multiple_of_the_patch():
  config = tiny_config()
  params = jax.eval_shape(vit.ViT(config).init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
  with pytest.raises(ValueError, match="30x28 pixels.*patch_size=7"):
    jax.eval_shape(vit.ViT(config).apply, params, jnp.zeros((1, 30, 28, 3)))


def test_hmlp_stem_matches_the_papers_strided_convolutions():
  """The hierarchical MLP stem equals Touvron et al.'s torch form: convolutions whose stride is
  their kernel (4, then 2, 2), the activation between, a quarter of the width until the last;
  the embedding (pre-norm off, no positions) is the stem's output."""
  config = vit.ViTConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2,
                         mlp_dim=32, act="gelu", use_cls=False, pre_norm=False,
                         position_embedding="none", stem="hmlp")
  params = random_params(config)
  x = images(32, 48)  # A 2×3 patch grid.
  embedded = vit.ViT(config).apply({"params": params}, x, method=vit.ViT.embed)
  stem = params["stem"]
  convs = []
  for level, side in enumerate(config.stem_cells):
    kernel = np.asarray(stem[f"level{level}"]["kernel"])  # [side, side, in, out]
    conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], side, stride=side)
    conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(np.asarray(stem[f"level{level}"]["bias"]).copy())
    convs += [conv, torch.nn.GELU()]
  with torch.no_grad():
    out = torch.nn.Sequential(*convs[:-1])(torch.from_numpy(x).permute(0, 3, 1, 2))
  expected = out.permute(0, 2, 3, 1).reshape(2, 6, 32).numpy()
  assert config.stem_cells == (4, 2, 2)
  assert [stem[f"level{i}"]["kernel"].shape[-1] for i in range(3)] == [8, 8, 32]
  assert_close(np.asarray(embedded), expected, tol=1e-5)


def test_hmlp_stem_embeds_each_patch_alone():
  """Changing one patch's pixels changes that patch's token and no other (the cells never cross
  a patch, so the stem fits tiles, crops and any grid)."""
  config = tiny_config(image_size=32, patch_size=8, stem="hmlp", position_embedding="none",
                       pre_norm=False, use_cls=False)
  params = random_params(config)
  x = images(32, 32, batch=1)
  y = x.copy()
  y[0, 8:16, 16:24] += 1.0  # Patch (1, 2) of the 4×4 grid.
  embed = jax.jit(lambda v: vit.ViT(config).apply({"params": params}, v, method=vit.ViT.embed))
  changed = np.abs(np.asarray(embed(y) - embed(x)))[0].max(-1) > 0
  assert changed.tolist() == [i == 4 + 2 for i in range(16)]


@pytest.mark.parametrize("patch,width", [(14, 32), (2, 32), (16, 30)])
def test_hmlp_stem_rejects_shapes_it_cannot_build(patch, width):
  with pytest.raises(ValueError, match=f"stem='hmlp'.*patch_size={patch}, width={width}"):
    vit.ViTConfig(image_size=patch * 2, patch_size=patch, width=width, num_heads=2, stem="hmlp")


def test_unknown_stem_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"stem 'conv'.*\('patch', 'hmlp'\)"):
    tiny_config(stem="conv")


def test_clip_converter_refuses_an_hmlp_stem():
  with pytest.raises(ValueError, match="'stem': 'hmlp'"):
    clip_vision.config_to_hf(tiny_config(image_size=32, patch_size=8, stem="hmlp"),
                             "CLIPVisionModel")
