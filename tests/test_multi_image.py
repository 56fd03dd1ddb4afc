"""Several images a row (`MLLMConfig.max_images`): rows of two, one and no images in one batch
give the logits and greedy tokens transformers gives for the same prompts — a LLaVA-1.5 (fixed
views, every image the same token count) and an InternVL (tiles, each image its own count, so the
images' padding must be skipped); and the model refuses views without `image_tokens`."""
import dataclasses

import numpy as np
import pytest
import torch
import transformers

from mmjax import sampling
from mmjax.convert import hf
from mmjax.models import mllm
from tests import hf_models

IMAGE_ID = 120
TEXT = dict(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
# Each row's images (height, width): two, one, none.
ROWS = [[(40, 90), (60, 60)], [(90, 30)], []]


def _convert(model):
  """transformers model → (its mmjax config with two images a row, params), in memory."""
  config = model.config.to_dict()
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  mm_config, params = hf.from_hf_tensors(config, tensors)
  return dataclasses.replace(mm_config, max_images=2), params


@pytest.fixture(scope="module", params=["llava", "internvl"])
def pair(request):
  torch.manual_seed(0)
  if request.param == "llava":
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION, image_size=28, patch_size=14),
        text_config=transformers.LlamaConfig(**TEXT), image_token_index=IMAGE_ID)
    config.architectures = ["LlavaForConditionalGeneration"]
    model = transformers.LlavaForConditionalGeneration(config)
  else:
    config = transformers.InternVLConfig(
        vision_config=dict(VISION, image_size=[56, 56], patch_size=[14, 14]),
        text_config=dict(TEXT, model_type="qwen2"), image_token_id=IMAGE_ID)
    config.architectures = ["InternVLForConditionalGeneration"]
    model = transformers.InternVLForConditionalGeneration(config)
  model = hf_models.perturb(model, scale=0.2)
  config, params = _convert(model)
  if request.param == "internvl":
    config = dataclasses.replace(config, tower=dataclasses.replace(config.tower, max_num=3))
  return model, config, params


def _inputs(rng, config, lengths):
  """Each row's prompt (its images' placeholders in order, text around and between them), mmjax's
  [B, 2, …] views and image_tokens, and transformers' pixels (every image's in order)."""
  policy = config.tower.policy("squash")  # LLaVA-1.5's processor squashes (crops) to square.
  prompts, views, pixels, tokens = [], [], [], []
  for row, (before, after) in zip(ROWS, lengths):
    ids, row_views, row_tokens = [rng.integers(0, IMAGE_ID, before)], [], []
    for size in row:
      image = rng.integers(0, 256, size + (3,), np.uint8)
      view = policy(image)
      n = int(config.image_tokens({k: v[None] for k, v in view.items()})[0])
      ids += [np.full(n, IMAGE_ID), rng.integers(0, IMAGE_ID, 2)]
      row_views.append(view)
      row_tokens.append(n)
      pixels.append(view["images"][None] if "images" in view
                    else view["tiles"][:int(view["tile_mask"].sum())])
    row_views += [policy.blank()] * (2 - len(row))
    views.append({k: np.stack([v[k] for v in row_views]) for k in row_views[0]})
    tokens.append(row_tokens + [0] * (2 - len(row)))
    prompts.append(np.concatenate(ids + [rng.integers(0, IMAGE_ID, after)]).astype(np.int32))
  batch_views = {k: np.stack([v[k] for v in views]) for k in views[0]}
  batch_views["image_tokens"] = np.asarray(tokens, np.int32)
  hf_pixels = np.concatenate(pixels).transpose(0, 3, 1, 2)
  return prompts, batch_views, {"pixel_values": torch.from_numpy(np.ascontiguousarray(hf_pixels))}


def test_logits_equal_transformers(pair, rng):
  model, config, params = pair
  hf_models.assert_same_logits(model, config, params,
                               *_inputs(rng, config, [(3, 5), (1, 2), (0, 4)]))


def test_greedy_generation_equals_transformers_generate(pair, rng):
  model, config, params = pair
  hf_models.assert_same_generation(model, config, params,
                                   *_inputs(rng, config, [(2, 6), (4, 1), (0, 3)]))


def test_views_without_image_tokens_are_refused(pair, rng):
  _, config, params = pair
  prompts, views, _ = _inputs(rng, config, [(1, 1)] * 3)
  del views["image_tokens"]
  with pytest.raises(ValueError, match="image_tokens"):
    sampling.generate(mllm.MLLM(config), {"params": params}, prompts, views, max_new_tokens=2,
                      eos_id=None, pad_id=0)
