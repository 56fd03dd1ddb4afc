"""An InternVL checkpoint folder's processor read by mmjax (`mmjax.data.hf_processor`) equals
transformers' `InternVLProcessor` over the same files: prompt text, input ids (each
`<IMG_CONTEXT>` expanded to `<img>`, `image_seq_length` tokens a tile, `</img>`), tiles bit for
bit (grid choice, thumbnail) and tile counts, on images of several sizes and aspect ratios and
prompts with none, one and two images, and decoded text. The folder is built offline
(`tests/hf_models.py`) beside an InternVL config.json."""
import json

import numpy as np
import pytest
import transformers
from PIL import Image

from mmjax.data import hf_processor
from tests import hf_models

TILE, MAX_PATCHES, PER_TILE = 56, 6, 4
SIZES = [(56, 56), (40, 90), (90, 40), (120, 75), (33, 47), (30, 200)]


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
  directory = tmp_path_factory.mktemp("internvl_processor")
  hf_models.save_internvl_processor(directory, TILE, MAX_PATCHES, PER_TILE)
  transformers.InternVLConfig().save_pretrained(directory)
  return hf_models.internvl_processor(directory), hf_processor.Processor(directory)


def _check(theirs, ours, images, text):
  messages = [{"role": "user", "content": [{"type": "image"}] * len(images) +
               [{"type": "text", "text": text}]}]
  prompt = ours.apply_chat_template(messages)
  assert prompt == theirs.apply_chat_template(messages, add_generation_prompt=True)
  ref = theirs(images=[Image.fromarray(x) for x in images] or None, text=[prompt],
               return_tensors="np")
  got = ours(prompt, images)
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"][0])
  if images:
    np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"].transpose(0, 2, 3, 1))
  return got


@pytest.mark.parametrize("size", SIZES)
def test_one_image_prompt_equals_transformers(processors, rng, size):
  theirs, ours = processors
  got = _check(theirs, ours, [rng.integers(0, 256, (*size, 3), np.uint8)], "What is it?")
  tiles = int(got["num_patches"][0])
  assert np.sum(got["input_ids"] == ours.image_token_id) == PER_TILE * tiles
  assert tiles == len(got["pixel_values"])


def test_two_images_and_text_only_equal_transformers(processors, rng):
  theirs, ours = processors
  images = [rng.integers(0, 256, (*size, 3), np.uint8) for size in SIZES[1:3]]
  got = _check(theirs, ours, images, "Which of the two images shows more figures?")
  assert len(got["num_patches"]) == 2 and sum(got["num_patches"]) > 2
  ids = _check(theirs, ours, [], "Isn't the cat on the mat? Ünïcödé ✓")["input_ids"]
  ids = np.concatenate([ids, [ours.eos_token_ids[0]]])
  assert ours.decode(ids) == theirs.tokenizer.decode(ids, skip_special_tokens=True)


def test_named_tokens_missing_from_tokenizer_json_are_added_as_transformers_adds_them(
    tmp_path, rng):
  """tokenizer_config.json names `<img>`, `</img>`, `<IMG_CONTEXT>` and `<video>`, which
  tokenizer.json lacks: transformers adds them at the end of the vocabulary on loading, in order,
  and so does mmjax's processor (the same ids and expansion)."""
  hf_models.save_internvl_processor(tmp_path, TILE, MAX_PATCHES, PER_TILE)
  hf_models.qwen2_tokenizer().save_pretrained(tmp_path)  # Without InternVL's named tokens.
  path = tmp_path / "tokenizer_config.json"
  config = json.loads(path.read_text())
  path.write_text(json.dumps({**config, "extra_special_tokens": hf_models.INTERNVL_NAMED}))
  transformers.InternVLConfig().save_pretrained(tmp_path)
  theirs, ours = hf_models.internvl_processor(tmp_path), hf_processor.Processor(tmp_path)
  assert ours.image_token_id == theirs.image_token_id > max(
      theirs.tokenizer.convert_tokens_to_ids(hf_models.QWEN2_VL_SPECIAL))
  got = _check(theirs, ours, [rng.integers(0, 256, (40, 90, 3), np.uint8)], "What is it?")
  assert ours.decode(got["input_ids"]) == theirs.tokenizer.decode(got["input_ids"],
                                                                   skip_special_tokens=True)
