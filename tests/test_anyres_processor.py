"""A LLaVA-NeXT or LLaVA-OneVision checkpoint folder's processor read by mmjax
(`mmjax.data.hf_processor`) equals transformers' processor over the same files: prompt text, input
ids (each `<image>` expanded to the base view's tokens and the unpadded — for OneVision, shrunk —
map with its newlines), crops bit for bit and image sizes, on images of several sizes and aspect
ratios (several canvases), prompts with none, one and two images (OneVision's multi-image form:
each image one view, padded to a square), and decoded text. The folders are built offline
(`tests/hf_models.py`): LLaVA-NeXT's around a LLaMA-style tokenizer, OneVision's around a
Qwen2-style one, each beside its model's config.json."""
import numpy as np
import pytest
import transformers
from PIL import Image

from mmjax.data import hf_processor
from tests import hf_models

CROP, PATCH = 28, 14
PINPOINTS = {"next": [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]],
             "onevision": [[28 * r, 28 * c] for r in range(1, 4) for c in range(1, 4)]}
SIZES = [(56, 56), (40, 90), (90, 40), (120, 75), (33, 47), (200, 30)]


@pytest.fixture(scope="module", params=sorted(PINPOINTS))
def processors(request, tmp_path_factory):
  """(transformers' processor, mmjax's) from one folder."""
  directory = tmp_path_factory.mktemp(request.param)
  if request.param == "next":
    hf_models.save_llava_next_processor(directory, CROP, PATCH, PINPOINTS["next"])
    transformers.LlavaNextConfig().save_pretrained(directory)
    theirs = transformers.AutoProcessor.from_pretrained(directory)
  else:
    hf_models.save_onevision_processor(directory, CROP, PATCH, PINPOINTS["onevision"])
    transformers.LlavaOnevisionConfig().save_pretrained(directory)
    theirs = hf_models.onevision_processor(directory)
  return theirs, hf_processor.Processor(directory)


def _messages(images: int, text: str):
  return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text",
                                                                       "text": text}]}]


def _check(theirs, ours, messages, images):
  text = ours.apply_chat_template(messages)
  assert text == theirs.apply_chat_template(messages, add_generation_prompt=True)
  pictures = [Image.fromarray(x) for x in images]
  # Images nested per prompt: OneVision's processor (and model) then treat several as one
  # multi-image prompt, as mmjax's processor treats the images of its one prompt.
  ref = theirs(images=[pictures] if pictures else None, text=[text], return_tensors="np")
  got = ours(text, images)
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"][0])
  if images:
    np.testing.assert_array_equal(got["pixel_values"],
                                  ref["pixel_values"].transpose(0, 1, 3, 4, 2))
    np.testing.assert_array_equal(got["image_sizes"], ref["image_sizes"])
  return got


@pytest.mark.parametrize("size", SIZES)
def test_one_image_prompt_equals_transformers(processors, rng, size):
  theirs, ours = processors
  got = _check(theirs, ours, _messages(1, "What is shown in the image?"),
               [rng.integers(0, 256, (*size, 3), np.uint8)])
  assert np.sum(got["input_ids"] == ours.image_token_id) > 4 + 2  # More than the base view.


def test_two_images_equal_transformers(processors, rng):
  theirs, ours = processors
  images = [rng.integers(0, 256, (*size, 3), np.uint8) for size in SIZES[1:3]]
  got = _check(theirs, ours, _messages(2, "Which of the two images shows more figures?"),
               images)
  assert got["pixel_values"].shape[0] == 2


def test_text_only_prompt_and_decoding_equal_transformers(processors):
  theirs, ours = processors
  got = _check(theirs, ours, _messages(0, "Isn't the cat on the mat? Ünïcödé ✓"), [])
  ids = np.concatenate([got["input_ids"], [ours.eos_token_ids[0]]])
  assert ours.decode(ids) == theirs.tokenizer.decode(ids, skip_special_tokens=True)
