"""A checkpoint folder's processor read by mmjax (`mmjax.data.hf_processor`) equals the
transformers processor saved there: prompt text, input ids, pixels and decoded text, on images of
several sizes and prompts with none, one and two images. The folder is built offline: a small
byte-fallback BPE tokenizer trained on a few sentences, LLaVA-1.5's processor classes and chat
template (`tests/hf_models.py`)."""
import numpy as np
import pytest
import transformers
from PIL import Image

from mmjax.data import hf_processor
from tests import hf_models

SIZES = [(56, 56), (40, 90), (90, 40), (120, 75), (33, 47), (200, 200)]


@pytest.fixture(scope="module", params=["processor_alone", "with_llava_config"])
def processors(request, tmp_path_factory):
  """(transformers' processor loaded back from the folder, mmjax's from the same folder). With a
  LLaVA config.json beside them, transformers loads the tokenizer.json as saved; alone, as the
  declared LlamaTokenizer rebuilds it (another pre-tokeniser: other ids for the same text)."""
  directory = tmp_path_factory.mktemp(request.param)
  hf_models.llava_processor(56, 14).save_pretrained(directory)
  if request.param == "with_llava_config":
    transformers.LlavaConfig().save_pretrained(directory)
  return transformers.AutoProcessor.from_pretrained(directory), hf_processor.Processor(directory)


def _images(n, rng, sizes=SIZES):
  return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), np.uint8) for i in range(n)]


def _messages(images: int, text: str):
  return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text",
                                                                       "text": text}]}]


@pytest.mark.parametrize("size", SIZES)
def test_one_image_prompt_equals_transformers(processors, rng, size):
  theirs, ours = processors
  image = rng.integers(0, 256, (*size, 3), np.uint8)
  messages = _messages(1, "What is shown in the image?")
  text = ours.apply_chat_template(messages)
  assert text == theirs.apply_chat_template(messages, add_generation_prompt=True)
  ref = theirs(images=[Image.fromarray(image)], text=[text], return_tensors="np")
  got = ours(text, [image])
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"][0])
  assert np.sum(got["input_ids"] == ours.image_token_id) == 16  # (56 / 14)², class token dropped.
  np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"].transpose(0, 2, 3, 1))


def test_two_images_and_a_conversation_equal_transformers(processors, rng):
  theirs, ours = processors
  images = _images(2, rng, [(40, 90), (120, 75)])
  messages = _messages(2, "Which of the two images shows more figures?") + [
      {"role": "assistant", "content": [{"type": "text", "text": "The first one."}]},
      {"role": "user", "content": [{"type": "text", "text": "Describe it."}]}]
  text = ours.apply_chat_template(messages)
  assert text == theirs.apply_chat_template(messages, add_generation_prompt=True)
  ref = theirs(images=[Image.fromarray(x) for x in images], text=[text], return_tensors="np")
  got = ours(text, images)
  np.testing.assert_array_equal(got["input_ids"], ref["input_ids"][0])
  np.testing.assert_array_equal(got["pixel_values"], ref["pixel_values"].transpose(0, 2, 3, 1))


def test_text_only_prompt_and_decoding_equal_transformers(processors):
  theirs, ours = processors
  text = ours.apply_chat_template(_messages(0, "Isn't the cat on the mat? Ünïcödé ✓"))
  ref = theirs(text=[text], return_tensors="np")["input_ids"][0]
  got = ours(text)["input_ids"]
  np.testing.assert_array_equal(got, ref)
  assert got[0] == theirs.tokenizer.bos_token_id
  with_special = np.concatenate([got, [theirs.tokenizer.eos_token_id]])
  assert ours.decode(with_special) == theirs.tokenizer.decode(with_special,
                                                              skip_special_tokens=True)


def test_a_marker_count_that_differs_from_the_images_is_refused(processors, rng):
  _, ours = processors
  text = ours.apply_chat_template(_messages(2, "Compare them."))
  with pytest.raises(ValueError, match="2 image markers '<image>' for 1 images"):
    ours(text, _images(1, rng))


def test_a_folder_without_a_tokenizer_is_named(tmp_path):
  with pytest.raises(hf_processor.errors.InputError, match="tokenizer.json — missing"):
    hf_processor.Processor(tmp_path)
