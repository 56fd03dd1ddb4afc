"""Whole InternVL checkpoints (`InternVLForConditionalGeneration`): conversion both ways, logits
and greedy generation equal to transformers' for prompts whose images are cut into different
numbers of tiles, in one batch, on tiny random-init models built offline — an InternViT-300M
style tower (LayerNorm, q/k/v biases) with a tied Qwen2 decoder, and an InternViT-6B style one
(RMSNorm, QK-norm, no q/k/v biases) with a LLaMA decoder."""
import dataclasses

import numpy as np
import pytest
import torch
import transformers

from mmjax import sampling
from mmjax.convert import __main__ as convert_main
from mmjax.convert import hf
from tests import hf_models

IMAGE_ID = 120
TILE, MAX_TILES = 56, 4  # 4 × 4 patches of 14 px, 2 × 2 tokens after the pixel unshuffle.
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              image_size=[TILE, TILE], patch_size=[14, 14])
TEXT = dict(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
VARIANTS = {
    "300m": dict(vision=dict(VISION, attention_bias=True), text=dict(TEXT, model_type="qwen2"),
                 tie=True, layer=-1),
    "6b": dict(vision=dict(VISION, norm_type="rms_norm", use_qk_norm=True, attention_bias=False),
               text=dict(TEXT, model_type="llama"), tie=False, layer=-2),
}
SIZES = [(40, 90), (60, 60), (90, 30)]  # 2, 1 and 3 tiles (+ a thumbnail past one).


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
  """(HF model, its directory, mmjax config with a small tile budget, mmjax params)."""
  v = VARIANTS[request.param]
  config = transformers.InternVLConfig(
      vision_config=v["vision"], text_config=v["text"], image_token_id=IMAGE_ID,
      vision_feature_layer=v["layer"], tie_word_embeddings=v["tie"])
  config.architectures = ["InternVLForConditionalGeneration"]
  torch.manual_seed(0)
  model = hf_models.perturb(transformers.InternVLForConditionalGeneration(config), scale=0.2)
  directory = hf_models.save(model, tmp_path_factory.mktemp(request.param) / "hf")
  out = directory.parent / "mmjax"
  assert convert_main.main(["--hf", str(directory), "--out", str(out)]) == 0
  mm_config, params, _ = hf.load(out)
  tower = dataclasses.replace(mm_config.tower, max_num=MAX_TILES - 1)
  return model, directory, dataclasses.replace(mm_config, tower=tower), params


def _inputs(rng, config, lengths):
  """Prompts of `lengths` text tokens around one image each (of `SIZES`), mmjax's views and
  transformers' pixel values (every prompt's tiles, one after another)."""
  policy = config.tower.policy("")
  prompts, views, tiles = [], [], []
  for (before, after), size in zip(lengths, SIZES):
    view = policy(rng.integers(0, 256, (*size, 3), np.uint8))
    n = int(view["tile_mask"].sum())
    text = rng.integers(0, IMAGE_ID, before + after)
    prompts.append(np.concatenate([text[:before], np.full(n * config.tower.tokens_per_tile,
                                                          IMAGE_ID), text[before:]]).astype(np.int32))
    views.append(view)
    tiles.append(view["tiles"][:n])
  assert sorted(len(t) for t in tiles) == [1, 3, 4]  # Three tile counts.
  batch_views = {k: np.stack([v[k] for v in views]) for k in ("tiles", "tile_mask")}
  pixels = np.concatenate(tiles).transpose(0, 3, 1, 2)
  return prompts, batch_views, {"pixel_values": torch.from_numpy(np.ascontiguousarray(pixels))}


def test_logits_equal_transformers(pair, rng):
  model, _, config, params = pair
  hf_models.assert_same_logits(model, config, params,
                               *_inputs(rng, config, [(3, 5), (1, 2), (0, 4)]))


def test_greedy_generation_equals_transformers_generate(pair, rng):
  """20 greedy tokens for three prompts with images of 1, 3 and 4 tiles, left-padded together."""
  model, _, config, params = pair
  hf_models.assert_same_generation(model, config, params,
                                   *_inputs(rng, config, [(2, 6), (4, 1), (0, 3)]))


def test_round_trip_is_bit_exact(pair, tmp_path):
  model, directory, _, _ = pair
  again = hf_models.exported_round_trip(model, directory.parent / "mmjax", tmp_path / "hf")
  for key in ("image_token_id", "vision_feature_layer", "tie_word_embeddings"):
    assert getattr(again.config, key) == getattr(model.config, key), key
  for key in ("norm_type", "use_qk_norm", "attention_bias", "use_mean_pooling"):
    assert getattr(again.config.vision_config, key) == getattr(model.config.vision_config, key)


def test_in_memory_names_convert_the_same(pair):
  """transformers 5's state_dict() names (`model.vision_tower.…`, `model.language_model.…`)."""
  model, directory, _, params = pair
  names = hf_models.converts_from_memory(model, directory, params)
  assert any(k.startswith("model.vision_tower.") for k in names)


def test_bfloat16_runs_close(pair, rng):
  _, _, config, params = pair
  prompts, views, _ = _inputs(rng, config, [(3, 5), (1, 2), (0, 4)])
  hf_models.assert_bfloat16_close(config, params, {**sampling.pad_prompts(prompts), **views})
