"""A Qwen2-VL checkpoint folder's processor read by mmjax (`mmjax.data.hf_processor`) equals
transformers' `Qwen2VLProcessor` over the same files: prompt text, input ids (each image marker
expanded to its merged-token count), patches, image grids, the M-RoPE positions the model computes
(`get_rope_index`) and decoded text, on images of several sizes and aspect ratios (below, inside
and over the pixel range) and prompts with none, one and three images. The folder is built
offline: a byte-level BPE trained on a few sentences, rebuilt as transformers' Qwen2Tokenizer,
Qwen2-VL's image processor and chat template (`tests/hf_models.py`)."""
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmjax.data import hf_processor
from tests import hf_models

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 16  # 4 to 16 merged tokens an image.
# (height, width): inside the range, under it (scaled up), over it (scaled down), odd sides,
# aspect ratios up to 15.
SIZES = [(56, 84), (40, 90), (90, 40), (120, 75), (33, 47), (200, 200), (20, 300)]


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
  """(transformers' processor, mmjax's, a tiny Qwen2-VL model for its positions), all from one
  folder that holds the processor files and a qwen2_vl config.json."""
  directory = tmp_path_factory.mktemp("qwen2_vl_processor")
  hf_models.save_qwen2_vl_processor(directory, MIN_PIXELS, MAX_PIXELS)
  ids = dict(zip(["vision_start_token_id", "vision_end_token_id", "image_token_id",
                  "video_token_id"], range(303, 307)))
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2),
      text_config=dict(vocab_size=320, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 3, 3]}), **ids)
  config.save_pretrained(directory)
  model = transformers.Qwen2VLForConditionalGeneration(config).eval()
  return hf_models.qwen2_vl_processor(directory), hf_processor.Processor(directory), model


def _messages(images: int, text: str):
  return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text",
                                                                       "text": text}]}]


def _check(theirs, ours, model, text, images):
  """mmjax's outputs for `text` and `images` equal transformers'; returns them."""
  ref = theirs(images=[Image.fromarray(x) for x in images] or None, text=[text],
               return_tensors="np")
  got = ours(text, images)
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"][0])
  if images:
    np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"])
    np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
  positions, _ = model.model.get_rope_index(
      torch.from_numpy(ref["input_ids"]), torch.from_numpy(ref["mm_token_type_ids"]),
      torch.from_numpy(ref["image_grid_thw"]) if images else None,
      attention_mask=torch.from_numpy(ref["attention_mask"]))
  np.testing.assert_array_equal(got["position_ids"], positions[:, 0].numpy())
  return got


@pytest.mark.parametrize("size", SIZES)
def test_one_image_prompt_equals_transformers(processors, rng, size):
  theirs, ours, model = processors
  image = rng.integers(0, 256, (*size, 3), np.uint8)
  messages = _messages(1, "What is shown in the image?")
  text = ours.apply_chat_template(messages)
  assert text == theirs.apply_chat_template(messages, add_generation_prompt=True)
  got = _check(theirs, ours, model, text, [image])
  tokens = int(np.sum(got["input_ids"] == ours.image_token_id))
  assert 4 <= tokens <= 16 and tokens == np.prod(got["image_grid_thw"][0]) // 4


def test_three_images_and_a_conversation_equal_transformers(processors, rng):
  theirs, ours, model = processors
  images = [rng.integers(0, 256, (*size, 3), np.uint8) for size in SIZES[1:4]]
  messages = _messages(3, "Which of the images shows more figures?") + [
      {"role": "assistant", "content": [{"type": "text", "text": "The first one."}]},
      {"role": "user", "content": [{"type": "text", "text": "Describe it."}]}]
  text = ours.apply_chat_template(messages)
  assert text == theirs.apply_chat_template(messages, add_generation_prompt=True)
  got = _check(theirs, ours, model, text, images)
  assert len(got["image_grid_thw"]) == 3


def test_text_only_prompt_and_decoding_equal_transformers(processors):
  theirs, ours, model = processors
  text = ours.apply_chat_template(_messages(0, "Isn't the cat on the mat?\n Ünïcödé ✓  twice"))
  got = _check(theirs, ours, model, text, [])["input_ids"]
  end = theirs.tokenizer.convert_tokens_to_ids("<|im_end|>")
  with_special = np.concatenate([got, [end]])
  assert ours.decode(with_special) == theirs.tokenizer.decode(with_special,
                                                              skip_special_tokens=True)
  assert "Ünïcödé ✓" in ours.decode(with_special)


def test_an_image_over_the_aspect_limit_and_a_marker_mismatch_are_refused(processors, rng):
  _, ours, _ = processors
  text = ours.apply_chat_template(_messages(1, "What is it?"))
  with pytest.raises(ValueError, match="1 image markers.*for 2 images"):
    ours(text, [rng.integers(0, 256, (56, 56, 3), np.uint8)] * 2)
  with pytest.raises(ValueError, match="[Aa]spect ratio"):
    ours(text, [rng.integers(0, 256, (4, 1000, 3), np.uint8)])
