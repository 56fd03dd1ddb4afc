"""Whole LLaVA-NeXT and LLaVA-OneVision checkpoints (`LlavaNextForConditionalGeneration`,
`LlavaOnevisionForConditionalGeneration`): conversion both ways, logits and greedy generation
equal to transformers' for prompts whose images have different sizes and aspect ratios (so
different canvases, unpadded maps and, for OneVision, shrunk maps) in one batch, on tiny
random-init models built offline."""
import numpy as np
import pytest
import torch
import transformers

from mmjax import sampling
from mmjax.convert import __main__ as convert_main
from mmjax.convert import hf
from mmjax.models import mllm
from tests import hf_models

IMAGE_ID = 120
CROP, PATCH = 28, 14  # 2 × 2 tokens a crop.
TEXT = dict(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              image_size=CROP, patch_size=PATCH)
VARIANTS = {
    # LLaVA-NeXT: CLIP's penultimate layer without its class token, LLaVA-NeXT's five canvases
    # (here in crops of 28 px), the whole unpadded map, a LLaMA decoder.
    "next": lambda: transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.LlamaConfig(**TEXT), image_token_index=IMAGE_ID,
        image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]),
    # llava-v1.6-mistral's shape: a Mistral decoder without a sliding window (LLaMA's
    # architecture; it exports as a LLaMA config of the same tensors).
    "next_mistral": lambda: transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.MistralConfig(**TEXT, sliding_window=None),
        image_token_index=IMAGE_ID, image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]]),
    # LLaVA-OneVision: SigLIP's last layer (and its pooling head, unused), canvases of 1…3 crops
    # a side, maps over one crop's tokens shrunk (anyres_max_1), a Qwen2 decoder; crops of 30 px
    # at patch 14, of which the patch convolution reads 28 (as SigLIP's 384 at 14 reads 378).
    "onevision": lambda: transformers.LlavaOnevisionConfig(
        vision_config=transformers.SiglipVisionConfig(**dict(VISION, image_size=30)),
        text_config=transformers.Qwen2Config(**TEXT), image_token_index=IMAGE_ID,
        video_token_index=121, vision_aspect_ratio="anyres_max_1",
        image_grid_pinpoints=[[30 * r, 30 * c] for r in range(1, 4) for c in range(1, 4)]),
}
# (height, width) of each prompt's image.
SIZES = [(40, 90), (90, 40), (60, 60)]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
  """(HF model, its directory, mmjax config, mmjax params) through `python -m mmjax.convert`."""
  config = VARIANTS[request.param]()
  config.architectures = [type(config).__name__.replace("Config", "ForConditionalGeneration")]
  torch.manual_seed(0)
  cls = getattr(transformers, config.architectures[0])
  model = hf_models.perturb(cls(config), scale=0.2)
  directory = hf_models.save(model, tmp_path_factory.mktemp(request.param) / "hf")
  out = directory.parent / "mmjax"
  assert convert_main.main(["--hf", str(directory), "--out", str(out)]) == 0
  mm_config, params, arch = hf.load(out)
  assert arch == config.architectures[0] and isinstance(mm_config, mllm.MLLMConfig)
  return model, directory, mm_config, params


def _inputs(rng, config, lengths):
  """Prompts of `lengths` text tokens around one image each (of `SIZES`), mmjax's views and
  transformers' pixel values (the same normalised crops, zero-padded to as many) and sizes."""
  policy = config.tower.policy("")
  prompts, views, sizes = [], [], []
  for (before, after), size in zip(lengths, SIZES):
    image = rng.integers(0, 256, (*size, 3), np.uint8)
    view = policy(image)
    text = rng.integers(0, IMAGE_ID, before + after)
    prompts.append(np.concatenate([text[:before], np.full(policy.num_tokens(image), IMAGE_ID),
                                   text[before:]]).astype(np.int32))
    views.append(view)
    sizes.append(size)
  batch_views = {k: np.stack([v[k] for v in views]) for k in config.tower.INPUTS}
  used = max(int(np.abs(v["crops"]).sum(axis=(1, 2, 3)).astype(bool).sum()) for v in views)
  crops = batch_views["crops"][:, :used].transpose(0, 1, 4, 2, 3)
  hf_inputs = {"pixel_values": torch.from_numpy(np.ascontiguousarray(crops)),
               "image_sizes": torch.tensor(sizes)}
  return prompts, batch_views, hf_inputs


def test_logits_equal_transformers(pair, rng):
  model, _, config, params = pair
  hf_models.assert_same_logits(model, config, params,
                               *_inputs(rng, config, [(3, 5), (1, 2), (0, 4)]))


def test_greedy_generation_equals_transformers_generate(pair, rng):
  """20 greedy tokens for three prompts with images of three sizes, left-padded in one batch."""
  model, _, config, params = pair
  hf_models.assert_same_generation(model, config, params,
                                   *_inputs(rng, config, [(2, 6), (4, 1), (0, 3)]))


def test_round_trip_is_bit_exact(pair, tmp_path):
  model, directory, _, _ = pair
  again = hf_models.exported_round_trip(model, directory.parent / "mmjax", tmp_path / "hf")
  for key in ("image_grid_pinpoints", "vision_feature_layer", "vision_feature_select_strategy",
              "image_token_index"):
    assert getattr(again.config, key) == getattr(model.config, key), key
  assert getattr(again.config, "vision_aspect_ratio", None) == getattr(
      model.config, "vision_aspect_ratio", None)


def test_in_memory_names_convert_the_same(pair):
  """transformers 5's state_dict() names (`model.vision_tower.…`, `model.image_newline`, …)."""
  model, directory, _, params = pair
  names = hf_models.converts_from_memory(model, directory, params)
  assert "model.image_newline" in names


def test_bfloat16_runs_close(pair, rng):
  _, _, config, params = pair
  prompts, views, _ = _inputs(rng, config, [(3, 5), (1, 2), (0, 4)])
  hf_models.assert_bfloat16_close(config, params, {**sampling.pad_prompts(prompts), **views})


def test_a_mistral_window_is_refused_and_the_top_level_flag_ties_the_head():
  """A Mistral decoder with a sliding window, given or left to MistralConfig's default (4096),
  is refused; LlavaNextConfig ties the head by its top-level flag alone (transformers' rule)."""
  config = transformers.LlavaNextConfig(
      vision_config=transformers.CLIPVisionConfig(**VISION),
      text_config=transformers.MistralConfig(**TEXT, sliding_window=16), image_token_index=IMAGE_ID)
  config.architectures = ["LlavaNextForConditionalGeneration"]
  converter = hf.converter(config.architectures[0])
  with pytest.raises(ValueError, match="sliding_window=16.*not supported"):
    converter.config_from_hf(config.to_dict())
  as_dict = config.to_dict()
  as_dict["text_config"] = {k: v for k, v in as_dict["text_config"].items()
                            if k not in ("sliding_window", "max_position_embeddings")}
  with pytest.raises(ValueError, match="sliding_window=4096.*not supported"):
    converter.config_from_hf(as_dict)
  llama = {**as_dict, "text_config": {**TEXT, "model_type": "llama", "tie_word_embeddings": True}}
  assert not converter.config_from_hf(llama).llm.tie_embeddings
  assert converter.config_from_hf({**llama, "tie_word_embeddings": True}).llm.tie_embeddings
