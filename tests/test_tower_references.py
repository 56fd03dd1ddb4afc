"""Whole towers against their authors' code, transcribed into torch inside this file.

Each reference names the upstream repository, file and commit it transcribes. The encoders are
transformers' `CLIPVisionModel` and `ConvNextModel` (for Oryx, the authors' timm-style ViT,
transcribed), every weight moved off its initial value and converted to mmjax with
`mmjax.convert.hf`; every other parameter — adapters, gates, projections — is drawn at random
(zero-initialised ones included) and loaded into the torch modules. float32, ≤ 1e-4, two input
sizes per tower where the tower allows.
"""
import math
import types

import flax.linen as nn
from flax import traverse_util
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from mmjax.convert import hf
from mmjax.convert import layout
from mmjax.models import mr_adapter
from mmjax.models import towers

TOL = 1e-4


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Moves every parameter off its initial value (norms at 1/0, zero biases and ConvNeXt's 1e-6
  layer scales would hide a misrouted tensor)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      big = "norm" in name or "layer_scale" in name
      p.add_(torch.randn(p.shape, generator=gen) * (0.5 if big else 0.1))
  return model.eval()


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
  """A CLIP ViT (32 px, patch 8: a 4×4 table) and a ConvNeXt, in torch and converted."""
  torch.manual_seed(0)
  clip = _perturbed(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
      image_size=32, patch_size=8, hidden_act="quick_gelu")), 1)
  convnext = _perturbed(transformers.ConvNextModel(transformers.ConvNextConfig(
      hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1])), 2)
  out = {}
  for name, model in (("clip", clip), ("convnext", convnext)):
    directory = tmp_path_factory.mktemp(name)
    model.save_pretrained(directory, safe_serialization=True)
    out[name] = (model, *hf.load_hf(directory))
  return types.SimpleNamespace(clip=out["clip"][0], vit=out["clip"][1],
                               vit_params=out["clip"][2], convnext=out["convnext"][0],
                               cnx=out["convnext"][1], cnx_params=out["convnext"][2])


def _params(module: nn.Module, inputs, encoders, seed: int = 0, **subtrees) -> dict:
  """Random parameters for `module` (normal · 0.2; LayerNorm scales 1 + that), with each
  `subtrees[path]` (a '/'-joined path) replaced by converted encoder weights, their ViT blocks
  renumbered into the module's block groups."""
  rng = np.random.default_rng(seed)
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *inputs))["params"]
  flat = traverse_util.flatten_dict(abstract)
  params = {k: ((1.0 if k[-1] == "scale" else 0.0) + 0.2 * rng.standard_normal(v.shape)).astype(
      np.float32) for k, v in flat.items()}
  for path, tree in subtrees.items():
    prefix = tuple(path.split("/"))
    like = [k[len(prefix):] for k in flat if k[:len(prefix)] == prefix]
    source = layout.regroup_blocks(traverse_util.flatten_dict(tree), like)
    # A CLIP's post-norm has no place in a tower, which reads hidden states only.
    assert set(like) <= set(source) and {k[0] for k in set(source) - set(like)} <= {"post_norm"}
    params.update({prefix + k: np.asarray(source[k], np.float32) for k in like})
  return traverse_util.unflatten_dict(params)


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, np.float32))


def _linear(p: dict) -> torch.nn.Linear:
  """A torch Linear holding an mmjax dense layer's kernel [in, out] and bias."""
  layer = torch.nn.Linear(*p["kernel"].shape)
  with torch.no_grad():
    layer.weight.copy_(_t(p["kernel"]).T)
    layer.bias.copy_(_t(p["bias"]))
  return layer


def _layer_norm(p: dict, eps: float = 1e-5) -> torch.nn.LayerNorm:
  norm = torch.nn.LayerNorm(p["scale"].shape[0], eps=eps)
  with torch.no_grad():
    norm.weight.copy_(_t(p["scale"]))
    norm.bias.copy_(_t(p["bias"]))
  return norm


def _conv1x1(p: dict) -> torch.nn.Conv2d:
  layer = _linear(p)
  conv = torch.nn.Conv2d(layer.in_features, layer.out_features, 1)
  with torch.no_grad():
    conv.weight.copy_(layer.weight[:, :, None, None])
    conv.bias.copy_(layer.bias)
  return conv


def _nchw(x) -> torch.Tensor:
  return _t(x).permute(0, 3, 1, 2)


def _images(batch: int, side: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((batch, side, side, 3)).astype(np.float32)


def _check(ours, expected: torch.Tensor) -> None:
  expected = expected.detach().numpy()
  assert np.asarray(ours).shape == expected.shape
  np.testing.assert_allclose(np.asarray(ours), expected, atol=TOL, rtol=0)


def _run(module: nn.Module, params: dict, *inputs):
  return jax.jit(module.apply)({"params": params}, *inputs)


# --- The encoders as the authors call them. ---


def _clip_embeddings(embeddings, pixels: torch.Tensor) -> torch.Tensor:
  """LLaVA-HR's (and EAGLE's) patched `CLIPVisionEmbeddings.forward` with `resample_pos_embed`:
  luogen1996/LLaVA-HR @1212ffb, `llava_hr/model/multimodal_encoder/clip_encoder.py` (the same in
  NVlabs/EAGLE @fef95f1, `eagle/model/multimodal_encoder/hr_clip_encoder.py`)."""
  batch_size = pixels.shape[0]
  patch_embeds = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
  class_embeds = embeddings.class_embedding.expand(batch_size, 1, -1)
  x = torch.cat([class_embeds, patch_embeds], dim=1)
  posemb = embeddings.position_embedding.weight[None]
  if posemb.shape[1] != x.shape[1]:
    new = int(math.sqrt(x.shape[1] - 1))
    old = int(math.sqrt(posemb.shape[1] - 1))
    prefix, grid = posemb[:, :1], posemb[:, 1:]
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=[new, new], mode="bicubic", antialias=True)
    posemb = torch.cat([prefix, grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], 1)
  return x + posemb


def _hr_clip(clip, pixels: torch.Tensor) -> torch.Tensor:
  """EAGLE's `HRCLIPVisionTower.forward` (NVlabs/EAGLE @fef95f1, `hr_clip_encoder.py`): the
  class token dropped before `pre_layrnorm`, every block, no post-norm. In transformers 5 the
  vision model's parts sit on `CLIPVisionModel` itself (4.x: `.vision_model.`), and a layer
  returns its hidden states (4.x: a tuple, hence the authors' `[0]`)."""
  x = _clip_embeddings(clip.embeddings, pixels)
  x = clip.pre_layrnorm(x[:, 1:])
  for blk in clip.encoder.layers:
    x = blk(x, None)
  return x


def _convnext_stages(convnext, pixels: torch.Tensor) -> list[torch.Tensor]:
  """The stem, then each stage's output (timm's `stem` and `stages`, as the authors' towers run
  them; transformers' `embeddings` and `encoder.stages` are the same layers)."""
  x = convnext.embeddings(pixels)
  out = []
  for stage in convnext.encoder.stages:
    x = stage(x)
    out.append(x)
  return out


# --- LLaVA-HR. ---


class _S2FStitchAlignModuleV2(torch.nn.Module):
  """luogen1996/LLaVA-HR @1212ffb, `llava_hr/model/multimodal_encoder/multipath_encoder_wapper.py`,
  `S2FStitchAlignModuleV2`; `gate_out` is 1 (the authors') or d, the paper's per-channel W2."""

  def __init__(self, p: dict, gate_out: int):
    super().__init__()
    self.slow_conv = _conv1x1(p["high_in"])
    self.slow_proj = _conv1x1(p["high_out"])
    d = p["dw_kernel"].shape[-1]
    self.fast_conv = torch.nn.Conv2d(d, d, 7, padding=3, groups=d)
    self.fast_proj = _conv1x1(p["low_out"])
    with torch.no_grad():
      self.fast_conv.weight.copy_(_t(p["dw_kernel"]).permute(3, 2, 0, 1))
      self.fast_conv.bias.copy_(_t(p["dw_bias"]))
    self.gate = torch.nn.Sequential(_linear(p["gate_in"]), torch.nn.GELU(),
                                    _linear(p["gate_out"]))
    assert self.gate[2].out_features == gate_out

  def src2dst_align(self, src_feat, dst_feat):
    dst_size = int(math.sqrt(dst_feat.shape[1]))
    assert src_feat.shape[1] % dst_feat.shape[1] == 0 or dst_feat.shape[1] % src_feat.shape[1] == 0
    if src_feat.shape[1] < dst_feat.shape[1]:
      b, l, c = src_feat.shape
      src_size = int(math.sqrt(l))
      src_feat = src_feat.transpose(1, 2).view(b, c, src_size, src_size)
      src_feat = F.interpolate(src_feat.float(), size=(dst_size, dst_size), mode="bilinear",
                               align_corners=True)
      src_feat = src_feat.view(b, c, -1).transpose(1, 2)
    elif src_feat.shape[1] > dst_feat.shape[1]:
      b, l, c = src_feat.shape
      src_size = int(math.sqrt(l))
      src_feat = src_feat.transpose(1, 2).view(b, c, src_size, src_size)
      src_feat = F.avg_pool2d(src_feat, src_size // dst_size, src_size // dst_size)
      src_feat = src_feat.reshape(b, c, -1).transpose(1, 2)
    return src_feat, dst_size

  def forward(self, fast_feat, slow_feat):
    b, c, h, w = slow_feat.shape
    _, _, d = fast_feat.shape
    slow_feat = self.slow_proj(F.gelu(self.slow_conv(slow_feat)))
    slow_feat = slow_feat.view(b, d, -1).transpose(1, 2)
    slow_feat_align, dst_size = self.src2dst_align(slow_feat, fast_feat)
    fast_feat = fast_feat.transpose(1, 2).reshape(b, d, dst_size, dst_size)
    fast_feat = fast_feat + self.fast_proj(F.gelu(self.fast_conv(fast_feat)))
    fast_feat = fast_feat.view(b, d, dst_size * dst_size).transpose(1, 2)
    gate = self.gate(torch.cat([fast_feat, slow_feat_align], -1).mean(1)).unsqueeze(1)
    return fast_feat + slow_feat_align * gate.tanh()


class _MultiPathAlignModule(torch.nn.Module):
  """The same file's `MultiPathAlignModule`: the final `Linear(F) + Linear(align(G))`."""

  def __init__(self, fast: dict, slow: dict):
    super().__init__()
    self.fast_proj = _linear(fast)
    self.slow_proj = _linear(slow)

  def forward(self, fast_feat, slow_feat):
    b, c, h, w = slow_feat.shape
    slow_feat = slow_feat.view(b, c, -1).transpose(1, 2)
    slow_feat, _ = _S2FStitchAlignModuleV2.src2dst_align(None, slow_feat, fast_feat)
    return self.fast_proj(fast_feat) + self.slow_proj(slow_feat)


def _llava_hr_reference(clip, convnext, adapters, align, x, fast_image_size):
  """`MultiPathCLIPVisionTower.forward` (same file) in evaluation; the authors compute
  fast_image_size = max(int(S / 32 · 14), 336), here a parameter of the test."""
  fast_blk = clip.encoder.layers
  n_blks = len(fast_blk) // 4
  y = F.interpolate(x.float(), size=(fast_image_size, fast_image_size), mode="bilinear",
                    align_corners=True)
  y = _clip_embeddings(clip.embeddings, y)
  y = clip.pre_layrnorm(y[:, 1:])
  x = _convnext_stages(convnext, x)[-1]
  for k in range(4):
    for blk in fast_blk[k * n_blks:(k + 1) * n_blks]:
      y = blk(y, None)
    if k < 3:
      y = adapters[k](y, x)
  return align(y, x)


# (tower input S, ViT input): the ViT's 8×8 grid above the ConvNeXt's 4×4 (upsampled), its
# 4×4 table resampled with antialiasing; then its 4×4 grid below an 8×8 map (average-pooled).
@pytest.mark.parametrize("image_size,vit_input", [(128, 64), (256, 32)])
@pytest.mark.parametrize("gate", mr_adapter.GATES)
def test_llava_hr_equals_the_authors_tower(encoders, image_size, vit_input, gate):
  cfg = towers.LLaVAHRTowerConfig(vit=encoders.vit, convnext=encoders.cnx, image_size=image_size,
                                  vit_input=vit_input,
                                  adapter=mr_adapter.MRAdapterConfig(gate=gate))
  assert cfg.adapter_positions == (1, 2, 3)
  images = _images(2, image_size)
  module = towers.tower_for(cfg)
  p = _params(module, (images,), encoders, vit=encoders.vit_params,
              convnext=encoders.cnx_params)
  adapters = [_S2FStitchAlignModuleV2(p[f"adapter_{i}"], 1 if gate == "scalar" else 16)
              for i in range(3)]
  align = _MultiPathAlignModule(p["vit_out"], p["convnext_out"])
  with torch.no_grad():
    expected = _llava_hr_reference(encoders.clip, encoders.convnext, adapters, align,
                                   _nchw(images), vit_input)
  _check(_run(module, p, images), expected)


# --- Mini-Gemini. ---


def _mgm_aux(convnext, images_aux):
  """dvlab-research/MGM @769820c, `mgm/model/multimodal_encoder/openclip_encoder.py`,
  `backbone`: every stage upsampled to stage 0's size and concatenated."""
  results = _convnext_stages(convnext, images_aux)
  target_size = results[0].shape[-2:]
  cat = [results[0]] + [F.interpolate(r.float(), size=target_size, mode="bilinear",
                                      align_corners=False) for r in results[1:]]
  return torch.cat(cat, dim=1)


def _unified_resampler(query, aux, val, images, images_aux):
  """`mgm/model/mgm_arch.py` (same commit), `unified_resampler`."""
  patch_num = int(images.shape[1] ** 0.5)
  patch_size = images_aux.shape[-1] // patch_num
  images_aux = images_aux.permute(0, 2, 3, 1)
  images_aux = images_aux.reshape(len(images_aux), patch_num, patch_size, patch_num, patch_size,
                                  images_aux.shape[-1])
  images_aux = images_aux.permute(0, 1, 3, 2, 4, 5)
  images_aux = images_aux.reshape(len(images_aux), patch_num ** 2, patch_size ** 2,
                                  images_aux.shape[-1]).contiguous()
  embed_query = query(images)
  embed_aux = aux(images_aux)
  embed_value = val(images_aux)
  embed_att = embed_query[:, :, None] @ (embed_aux.transpose(-1, -2) / (embed_aux.shape[-1] ** 0.5))
  embed_att = embed_att.nan_to_num()
  embed_feat = (embed_att.softmax(-1) @ embed_value).mean(2)
  return images, embed_feat


def _mgm_views(image_aux, raw_side, image_grid):
  """`mgm/train/train.py` (same commit), `_sample_item`, batched: the low-resolution image(s)
  made from the normalised high-resolution one, crops row-major and the global view last."""
  image = F.interpolate(image_aux, size=[raw_side * image_grid] * 2, mode="bilinear",
                        align_corners=False)
  if image_grid < 2:
    return image
  b = image.shape[0]
  raw = image.reshape(b, 3, image_grid, raw_side, image_grid, raw_side)
  raw = raw.permute(0, 2, 4, 1, 3, 5).reshape(b, -1, 3, raw_side, raw_side)
  global_image = F.interpolate(image, size=[raw_side, raw_side], mode="bilinear",
                               align_corners=False)
  return torch.cat([raw, global_image[:, None]], dim=1)


def _mgm_reference(clip, convnext, mining, images_aux, raw_side, image_grid):
  """`encode_images` (`mgm/model/mgm_arch.py`, same commit) up to the projector, with the CLIP
  tower's `feature_select` (select_layer -2, 'patch') and image_global = image_grid > 1."""
  query, aux, val = (torch.nn.Sequential(_layer_norm(mining[f"{n}_norm"]), _linear(mining[n]))
                     for n in ("query", "key", "value"))
  images = _mgm_views(images_aux, raw_side, image_grid)
  image_global = image_grid > 1
  if image_grid > 1:
    batch_size = images.shape[0]
    global_images = images[:, -1:].flatten(0, 1).contiguous()
    grid_images = images[:, :-1].flatten(0, 1).contiguous()
    images = torch.cat([grid_images, global_images], dim=0)
  image_features = clip(pixel_values=images, output_hidden_states=True).hidden_states[-2][:, 1:]
  if image_global:
    image_feat_global = image_features[-len(global_images):]
    image_features = image_features[:len(grid_images)]
  image_aux_features_raw = _mgm_aux(convnext, images_aux)
  if image_global:
    image_aux_features_global = F.interpolate(image_aux_features_raw.float(),
                                              scale_factor=1 / image_grid, mode="bilinear",
                                              align_corners=False)
    image_feat_global, image_aux_feat_global = _unified_resampler(
        query, aux, val, image_feat_global, image_aux_features_global)
  if image_grid > 1:
    image_aux_features_raw = image_aux_features_raw.reshape(
        *image_aux_features_raw.shape[:2], image_grid,
        image_aux_features_raw.shape[-2] // image_grid, image_grid,
        image_aux_features_raw.shape[-1] // image_grid)
    image_aux_features_raw = image_aux_features_raw.permute(0, 2, 4, 1, 3, 5).flatten(
        1, 2).flatten(0, 1).contiguous()
  image_features, image_aux_features = _unified_resampler(query, aux, val, image_features,
                                                          image_aux_features_raw)
  if image_grid > 1:
    image_features = image_features.reshape(batch_size, image_grid ** 2,
                                            *image_features.shape[1:]).flatten(1, 2)
    image_aux_features = image_aux_features.reshape(batch_size, image_grid ** 2,
                                                    *image_aux_features.shape[1:]).flatten(1, 2)
  if image_global:
    image_features = torch.cat([image_feat_global, image_features], dim=1)
    image_aux_features = torch.cat([image_aux_feat_global, image_aux_features], dim=1)
  return image_features + image_aux_features


# Regions of 4×4 and 8×8 map positions under each of the ViT's 4×4 tokens (per view for HD).
@pytest.mark.parametrize("hd,image_size", [(False, 64), (False, 128), (True, 128), (True, 256)])
def test_mini_gemini_equals_the_authors_tower(encoders, hd, image_size):
  cfg = towers.MiniGeminiTowerConfig(vit=encoders.vit, convnext=encoders.cnx,
                                     image_size=image_size, hd=hd)
  images = _images(2, image_size)
  module = towers.tower_for(cfg)
  p = _params(module, (images,), encoders, vit=encoders.vit_params,
              convnext=encoders.cnx_params)
  with torch.no_grad():
    expected = _mgm_reference(encoders.clip, encoders.convnext, p["mining"], _nchw(images),
                              encoders.vit.image_size, 2 if hd else 1)
  _check(_run(module, p, images), expected)


# --- EAGLE. ---


def _eagle_reference(towers_in, x, input_image_size, grid_size):
  """NVlabs/EAGLE @fef95f1, `eagle/model/multimodal_encoder/
  multi_backbone_channel_concatenation_encoder.py`, `forward`; `towers_in` holds (run, input
  side) per encoder — `_hr_clip`, or the ConvNeXt wrapper's last stage as (b, n, c)."""
  num_tokens = grid_size ** 2
  features = []
  for vision_tower, side in towers_in:
    if side != input_image_size:
      resized_x = F.interpolate(x.float(), size=(side, side), mode="bilinear",
                                align_corners=True)
    else:
      resized_x = x
    feature = vision_tower(resized_x)
    if len(feature.shape) == 3:
      b, n, c = feature.shape
      if n == num_tokens:
        features.append(feature)
        continue
      w = h = int(n ** 0.5)
      feature = feature.transpose(1, 2).reshape(b, c, h, w)
    else:
      b, c, h, w = feature.shape
    if w != grid_size:
      feature = F.interpolate(feature.float(), size=(grid_size, grid_size), mode="bilinear",
                              align_corners=True)
    features.append(feature.flatten(2, 3).transpose(1, 2))
  return torch.cat(features, dim=-1)


def _eagle_encoders(encoders, image_size, grid, fusion="channel"):
  specs = (towers.EncoderSpec(vit=encoders.vit, image_size=encoders.vit.image_size, select=-1),
           towers.EncoderSpec(convnext=encoders.cnx, image_size=image_size, select=-1))
  cfg = towers.EagleTowerConfig(encoders=specs, image_size=image_size, grid=grid, fusion=fusion)
  images = _images(2, image_size)
  module = towers.tower_for(cfg)
  p = _params(module, (images,), encoders, **{"encoder_0/vit": encoders.vit_params,
                                              "encoder_1/convnext": encoders.cnx_params})

  def convnext_last(pixels):  # `convnext_encoder.py`'s `forward_features(...)[-1]`
    x = _convnext_stages(encoders.convnext, pixels)[-1]
    return x.flatten(2).transpose(1, 2)

  runs = [(lambda pixels: _hr_clip(encoders.clip, pixels), encoders.vit.image_size),
          (convnext_last, image_size)]
  return module, p, images, runs


# S = 64: the ViT's 4×4 map is already on the grid and kept, the ConvNeXt's 2×2 upsampled;
# S = 128 on a 6×6 grid: both interpolated.
@pytest.mark.parametrize("image_size,grid", [(64, 4), (128, 6)])
def test_eagle_channel_fusion_equals_the_authors_tower(encoders, image_size, grid):
  module, p, images, runs = _eagle_encoders(encoders, image_size, grid)
  with torch.no_grad():
    expected = _eagle_reference(runs, _nchw(images), image_size, grid)
  _check(_run(module, p, images), expected)


def test_eagle_sequence_fusion_follows_the_paper(encoders):
  """Not in the authors' code: the paper's sequence append, each encoder's grid-aligned tokens
  (the channel fusion's, above) linearly projected to one width, encoder after encoder."""
  module, p, images, runs = _eagle_encoders(encoders, 128, 6, fusion="sequence")
  with torch.no_grad():
    aligned = _eagle_reference(runs, _nchw(images), 128, 6)
    parts = aligned.split([16, 16], dim=-1)
    expected = torch.cat([_linear(p[f"project_{i}"])(x) for i, x in enumerate(parts)], dim=1)
  _check(_run(module, p, images), expected)


# --- LEO. ---


def _leo_mlp(p: dict, i: int) -> torch.nn.Sequential:
  """Mozhgan91/LEO @d2787c6, `leo_chat/leo/model/projector/modeling_projector.py`, `MLP`."""
  return torch.nn.Sequential(_layer_norm(p[f"project_{i}_norm"]), _linear(p[f"project_{i}_in"]),
                             torch.nn.GELU(), _linear(p[f"project_{i}_out"]))


def _leo_pixel_unshuffle(x, scale_factor=0.5):
  """`leo_chat/leo/model/leo_chat/modeling_leo_chat.py` (same commit), `pixel_unshuffle`
  (ps_version v2)."""
  n, w, h, c = x.size()
  x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
  x = x.permute(0, 2, 1, 3).contiguous()
  x = x.view(n, int(h * scale_factor), int(w * scale_factor),
             int(c / (scale_factor * scale_factor)))
  return x.permute(0, 2, 1, 3).contiguous()


def _leo_reference(mlp1, mlp2, clip, convnext_stage, x_vit, x_conv, down, down2):
  """The same file's `extract_feature_vision_1` (select_layer -1: the last hidden state, class
  token dropped), `extract_feature_vision_2` (`pixel_unshuffle_sam`: torch's pixel_unshuffle
  of a channels-first map) and the interleaving of `forward`."""
  vit_embeds = clip(pixel_values=x_vit).last_hidden_state[:, 1:, :]
  h = w = int(vit_embeds.shape[1] ** 0.5)
  vit_embeds = _leo_pixel_unshuffle(vit_embeds.reshape(vit_embeds.shape[0], h, w, -1), down)
  vit_embeds_1 = mlp1(vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1]))
  sam = F.pixel_unshuffle(convnext_stage(x_conv), int(down2)).permute(0, 2, 3, 1).contiguous()
  vit_embeds_2 = mlp2(sam.reshape(sam.shape[0], -1, sam.shape[-1]))
  v_b, v_n, v_c = vit_embeds_1.shape
  merged = torch.empty(v_b, 2 * v_n, v_c, dtype=vit_embeds_1.dtype)
  merged[:, 0::2] = vit_embeds_1
  merged[:, 1::2] = vit_embeds_2
  return merged


# LEO's encoders each read their own preprocessed image (InternViT a 448 tile, SAM 1024 px);
# here each reads the tower's input resized as `EncoderSpec` does, in both paths. The ConvNeXt's
# stride-8 map (SAM's slot) is unshuffled by 4 (LEO's downsample_ratio2) or 8.
@pytest.mark.parametrize("image_size", [64, 128])
def test_leo_equals_the_authors_fusion(encoders, image_size):
  specs = (towers.EncoderSpec(vit=encoders.vit, image_size=encoders.vit.image_size, select=-1),
           towers.EncoderSpec(convnext=encoders.cnx, image_size=image_size, select=1))
  cfg = towers.LEOTowerConfig(encoders=specs, image_size=image_size, grid=2, out_width=24)
  images = _images(2, image_size)
  module = towers.tower_for(cfg)
  p = _params(module, (images,), encoders, **{"encoder_0/vit": encoders.vit_params,
                                              "encoder_1/convnext": encoders.cnx_params})
  x = _nchw(images)
  x_vit = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=True)
  with torch.no_grad():
    expected = _leo_reference(_leo_mlp(p, 0), _leo_mlp(p, 1), encoders.clip,
                              lambda pixels: _convnext_stages(encoders.convnext, pixels)[1],
                              x_vit, x, 0.5, image_size // 8 // 2)
  _check(_run(module, p, images), expected)


# --- Oryx. ---


class _OryxBlock(torch.nn.Module):
  """Oryx-mllm/Oryx @f8c8bc3, `oryx/model/multimodal_encoder/oryx_vit.py`, `Block` and
  `Attention` (timm 0.9.16's `Mlp`, exact GELU; no layer scale, no drop path), with one mmjax
  block's weights (fused qkv: [q | k | v], each head-major). The authors' flash-attention over
  one image's tokens is exact attention: `scaled_dot_product_attention` with the same scale."""

  def __init__(self, p: dict, num_heads: int):
    super().__init__()
    dim = p["ln1"]["scale"].shape[0]
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.scale = self.head_dim ** -0.5
    self.norm1, self.norm2 = _layer_norm(p["ln1"], 1e-6), _layer_norm(p["ln2"], 1e-6)
    attn = p["attn"]
    self.qkv = _linear({"kernel": np.concatenate([np.asarray(attn[n]["kernel"]).reshape(dim, dim)
                                                  for n in "qkv"], 1),
                        "bias": np.concatenate([np.asarray(attn[n]["bias"]).ravel()
                                                for n in "qkv"])})
    self.proj = _linear({"kernel": np.asarray(attn["o"]["kernel"]).reshape(dim, dim),
                         "bias": attn["o"]["bias"]})
    self.fc1, self.fc2 = _linear(p["mlp"]["fc1"]), _linear(p["mlp"]["fc2"])

  def attn(self, x):
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # B, heads, N, head_dim
    return self.proj(x.transpose(1, 2).reshape(B, N, -1))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _oryx_vit(pixels, patch_kernel, patch_bias, pos_embed, blocks, patch):
  """`forward_features_list` (same file) for one view: padded to the patch, patch convolution,
  the position table bilinearly resized to the view's grid (`rescale_positional_embedding`),
  every block, no final norm."""
  _, _, h, w = pixels.shape
  pad_h, pad_w = (patch - h % patch) % patch, (patch - w % patch) % patch
  x = F.pad(pixels, (0, pad_w, 0, pad_h))
  h, w = x.shape[2] // patch, x.shape[3] // patch
  x = F.conv2d(x, patch_kernel, patch_bias, stride=patch).flatten(2).transpose(1, 2)
  side = int(pos_embed.shape[1] ** 0.5)
  if (h, w) == (side, side):
    pos = pos_embed
  else:
    pe_2d = pos_embed[0].T.contiguous().view(1, -1, side, side)
    pe_2d = F.interpolate(pe_2d, (h, w), mode="bilinear", align_corners=False).view(-1, h * w)
    pos = pe_2d.T.contiguous()[None]
  x = x + pos
  for blk in blocks:
    x = blk(x)
  return x, (h, w)


def _oryx_projector_reference(low, low_size, high, high_size, proj, newline, sep, begin, end):
  """`SimpleMlp(twoview=True).forward` for an image (`oryx/model/multimodal_projector/
  builder.py`, same commit): each view's tokens through the MLP, a newline after every row, the
  separator between the views, begin and end around them."""
  views = []
  for x, (h, w) in ((low, low_size), (high, high_size)):
    x = proj(x.reshape(1, h, w, -1))
    x = torch.cat([x, newline.reshape(1, 1, 1, -1).expand(1, h, 1, -1)], dim=2)
    views.append(x.reshape(1, -1, x.shape[-1]))
  return torch.cat([begin[None, None], views[0], sep[None, None], views[1], end[None, None]],
                   dim=1)[0]


def test_oryx_tower_equals_the_authors_vit_and_projector():
  """Two images of different sizes packed into one row each (a native view shrunk, one padded):
  each equals the authors' ViT on each view alone, the compressor for
  images (2x, test_towers.py) and the two-view projector's layout."""
  from mmjax.data import pipeline
  from mmjax.data import resolution
  from mmjax.models import vit
  rng = np.random.default_rng(0)
  cfg_vit = vit.ViTConfig(image_size=8, patch_size=8, width=16, depth=2, num_heads=2,
                          mlp_dim=32, act="gelu", norm_eps=1e-6, use_cls=False, pre_norm=False,
                          position_embedding="none")
  policy = pipeline.OryxViews(patch=8, multiple=16, low_base=32, max_res=64, table=6)
  config = towers.OryxTowerConfig(vit=cfg_vit, table=6, mid=4, out_width=12,
                                  max_patches=policy.max_patches, budget=policy.budget)
  images = [rng.integers(0, 256, (50, 90, 3), np.uint8),  # Native view shrunk (area > 64²).
            rng.integers(0, 256, (40, 56, 3), np.uint8)]  # Native view padded to 48 × 64.
  rows = [policy(im) for im in images]
  batch = [np.stack([r[k] for r in rows]) for k in config.INPUTS]
  module = towers.tower_for(config)
  p = _params(module, batch, None)
  out = np.asarray(_run(module, p, *batch))
  assert out.shape == (2, policy.budget, 12)
  kernel = _t(np.asarray(p["patch_embed"]["kernel"]).T.reshape(16, 3, 8, 8))
  bias = _t(p["patch_embed"]["bias"])
  table = _t(p["pos_embed"])[None]
  blocks = [_OryxBlock(p["blocks"][f"layers_{i}"], 2) for i in range(2)]
  proj = torch.nn.Sequential(_linear(p["projector"]["linear_0"]), torch.nn.GELU(),
                             _linear(p["projector"]["linear_1"]))
  special = _t(p["special_tokens"])
  sizes_seen = set()
  for b, image in enumerate(images):
    feats, sizes = [], []
    with torch.no_grad():
      for view in resolution.oryx_views(image, 16, 32, 64):
        pixels = _t((view.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(2, 0, 1)[None]
        x, size = _oryx_vit(pixels, kernel, bias, table, blocks, 8)
        feats.append(2 * x[0])  # The dynamic compressor for images (test_towers.py).
        sizes.append(size)
      expected = _oryx_projector_reference(feats[0], sizes[0], feats[1], sizes[1], proj,
                                           *special)
    sizes_seen |= set(sizes)
    length = len(expected)
    assert length == policy.num_tokens(image)
    np.testing.assert_allclose(out[b, :length], expected.numpy(), atol=TOL, err_msg=str(b))
    assert not np.any(out[b, length:])
  # Three view grids (both low views are 2×4), none the table's 6×6: every view resizes it.
  assert sizes_seen == {(2, 4), (4, 10), (6, 8)}
