"""Whole Qwen2-VL checkpoints (`Qwen2VLForConditionalGeneration`): conversion both ways, logits
and greedy generation equal to transformers' for prompts whose images have different sizes, in
one batch, on a tiny random-init model built offline."""
import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax import sampling
from mmjax.convert import __main__ as convert_main
from mmjax.convert import hf
from mmjax.data import mrope
from mmjax.data import patches as patches_lib
from mmjax.data import pipeline
from mmjax.models import mllm
from tests import hf_models

START, IMAGE, END = 150, 151, 153  # <|vision_start|>, <|image_pad|>, <|vision_end|>.
MAX_PATCHES = 64
# (height, width) of each prompt's image: 4×4, 4×8 and 6×4 patches of 14 px.
SIZES = [(56, 56), (56, 112), (84, 56)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """(HF model, its directory, mmjax config, mmjax params) through `python -m mmjax.convert`."""
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=2, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2,
                         patch_size=14, temporal_patch_size=2, spatial_merge_size=2),
      text_config=dict(vocab_size=160, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=1,
                       eos_token_id=2, rope_parameters={"rope_type": "default",
                                                        "rope_theta": 10000.0,
                                                        "mrope_section": [2, 1, 3]}),
      image_token_id=IMAGE, video_token_id=152, vision_start_token_id=START,
      vision_end_token_id=END)
  config.architectures = ["Qwen2VLForConditionalGeneration"]
  config.vision_config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = hf_models.perturb(transformers.Qwen2VLForConditionalGeneration(config), scale=0.2)
  directory = tmp_path_factory.mktemp("qwen2_vl") / "hf"
  model.save_pretrained(directory)
  out = directory.parent / "mmjax"
  assert convert_main.main(["--hf", str(directory), "--out", str(out)]) == 0
  mm_config, params, _ = hf.load(out)
  tower = mm_config.tower.__class__(vit=mm_config.tower.vit, max_patches=MAX_PATCHES)
  return model, directory, mllm.MLLMConfig(**{**mm_config.__dict__, "tower": tower}), params


def _inputs(rng, config, texts):
  """Prompts (text before and after each image) → mmjax's rows and transformers' inputs."""
  policy = config.tower.policy("")
  prompts, positions, views, hf_patches, grids = [], [], [], [], []
  for (before, after), size in zip(texts, SIZES):
    image = rng.integers(0, 256, (*size, 3), np.uint8)
    native = patches_lib.native_image(image, pipeline.CLIP_MEAN, pipeline.CLIP_STD,
                                      max_pixels=MAX_PATCHES * 14 * 14)
    grid = (1, *native.grid)
    n = native.num_tokens // 4
    text = rng.integers(3, START, before + after)
    ids = np.concatenate([text[:before], [START], np.full(n, IMAGE), [END], text[before:]])
    types = (ids == IMAGE).astype(np.int64)
    pos, _ = mrope.mrope_positions(types.tolist(), [grid])
    prompts.append(ids.astype(np.int32))
    positions.append(pos.T)
    views.append(policy(image))
    hf_patches.append(native.patches)
    grids.append(grid)
  batch_views = {k: np.stack([v[k] for v in views]) for k in config.tower.INPUTS}
  hf_inputs = {"pixel_values": torch.from_numpy(np.concatenate(hf_patches)),
               "image_grid_thw": torch.tensor(grids)}
  return prompts, positions, batch_views, hf_inputs


def _hf_text(batch):
  """transformers' text inputs: ids, mask, and which tokens are an image's (for M-RoPE)."""
  tokens = torch.from_numpy(batch["tokens"]).long()
  return {"input_ids": tokens, "attention_mask": torch.from_numpy(batch["segment_ids"]).long(),
          "mm_token_type_ids": (tokens == IMAGE).long()}


def test_logits_equal_transformers(pair, rng):
  model, _, config, params = pair
  prompts, positions, views, hf_inputs = _inputs(rng, config, [(3, 5), (1, 2), (0, 4)])
  batch = sampling.pad_prompts(prompts, positions=positions)
  with torch.no_grad():
    ref = model(**_hf_text(batch), **hf_inputs).logits.numpy()
  logits, _ = jax.jit(mllm.MLLM(config).apply)({"params": params}, {**batch, **views})
  valid = batch["segment_ids"] == 1
  assert np.abs(ref[valid]).max() > 1
  np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=1e-4, rtol=0)


def test_greedy_generation_equals_transformers_generate(pair, rng):
  """20 greedy tokens for three prompts with images of three sizes, left-padded in one batch."""
  model, _, config, params = pair
  prompts, positions, views, hf_inputs = _inputs(rng, config, [(2, 6), (4, 1), (0, 3)])
  ours, lengths = sampling.generate(mllm.MLLM(config), {"params": params}, prompts, views,
                                    max_new_tokens=20, eos_id=2, pad_id=0, bucket=1,
                                    positions=positions)
  batch = sampling.pad_prompts(prompts, positions=positions)
  gen = transformers.GenerationConfig(max_new_tokens=20, do_sample=False, eos_token_id=2,
                                      pad_token_id=0)
  with torch.no_grad():
    ref = model.generate(**_hf_text(batch), generation_config=gen, **hf_inputs)
  hf_models.assert_same_greedy(ours, lengths, ref, batch["tokens"].shape[1])


def test_round_trip_is_bit_exact(pair, tmp_path):
  model, directory, _, _ = pair
  again = hf_models.exported_round_trip(model, directory.parent / "mmjax", tmp_path / "hf")
  assert again.config.text_config.rope_parameters["mrope_section"] == [2, 1, 3]
  assert again.config.image_token_id == IMAGE


def test_in_memory_names_convert_the_same(pair):
  """transformers 5's state_dict() names (`model.visual.…`, `model.language_model.…`)."""
  model, directory, _, params = pair
  names = hf_models.converts_from_memory(model, directory, params)
  assert any(k.startswith("model.visual.") for k in names)


def test_bfloat16_runs_close(pair, rng):
  _, _, config, params = pair
  prompts, positions, views, _ = _inputs(rng, config, [(3, 5), (1, 2), (0, 4)])
  hf_models.assert_bfloat16_close(
      config, params, {**sampling.pad_prompts(prompts, positions=positions), **views})
