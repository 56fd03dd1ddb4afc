"""Tokenizers and chat templates: round trips, exact prompts, answer-only masks, image runs,
truncation, model inputs and rejection reasons."""
import pickle

import hypothesis
import numpy as np
import pytest
import tokenizers
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from mmjax import errors
from mmjax.data import tokenizer as tok_lib

N = 4  # Visual tokens per image in these tests.
IMAGE = tok_lib.IMAGE_ID
BYTES = tok_lib.ByteTokenizer()
CONV = [
    {"from": "human", "value": "<image>\nWhat is in the picture?"},
    {"from": "gpt", "value": "A red bicycle."},
    {"from": "human", "value": "What colour is it?"},
    {"from": "gpt", "value": "Red, with black tyres."},
]
CAPTION = [{"from": "human", "value": "<image>\nDescribe the image."},
           {"from": "gpt", "value": "A red bicycle on grass."}]
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The "
                 "assistant gives helpful, detailed, and polite answers to the user's questions.")

# Decoded with specials shown, the image run collapsed to one "<image>".
EXPECTED = {
    "vicuna_v1": (
        "<s>" + VICUNA_SYSTEM + " USER: <image>\nWhat is in the picture? ASSISTANT: A red "
        "bicycle.</s>USER: What colour is it? ASSISTANT: Red, with black tyres.</s>",
        ["A red bicycle.</s>", "Red, with black tyres.</s>"]),
    "vicuna_short": (
        "<s>USER: <image>\nWhat is in the picture? ASSISTANT: A red bicycle.</s>USER: What "
        "colour is it? ASSISTANT: Red, with black tyres.</s>",
        ["A red bicycle.</s>", "Red, with black tyres.</s>"]),
    "llava_v1": (
        "<s>A chat between a curious human and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the human's questions. USER: "
        "<image>\nWhat is in the picture? ASSISTANT: A red bicycle.</s>USER: What colour is it? "
        "ASSISTANT: Red, with black tyres.</s>",
        ["A red bicycle.</s>", "Red, with black tyres.</s>"]),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>\n"
        "<|im_start|>assistant\nA red bicycle.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is it?<|im_end|>\n"
        "<|im_start|>assistant\nRed, with black tyres.<|im_end|>\n",
        ["A red bicycle.<|im_end|>", "Red, with black tyres.<|im_end|>"]),
}


def _shown(tok, ids) -> str:
  """Decoded with specials, each whole image run shown as one "<image>"."""
  return tok.decode(ids, skip_special_tokens=False).replace(tok_lib.IMAGE_TAG * N,
                                                            tok_lib.IMAGE_TAG)


def _runs(mask) -> list[tuple[int, int]]:
  """[start, end) of each run of ones."""
  edges = np.diff(np.concatenate([[0], np.asarray(mask), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _answers(tok, enc) -> list[str]:
  return [tok.decode(enc.ids[a:b], skip_special_tokens=False) for a, b in _runs(enc.loss_mask)]


def _image_runs(ids) -> list[tuple[int, int]]:
  return _runs(np.asarray(ids) == IMAGE)


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory):
  """A byte-level BPE tokenizer.json with Qwen's specials, trained here, and its path."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator([m["value"] for m in CONV + CAPTION] * 5, trainer)
  path = tmp_path_factory.mktemp("qwen") / "tokenizer.json"
  tok.save(str(path))
  return path


# Tokenizers -------------------------------------------------------------------------------------


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.text())
def test_byte_round_trip(text):
  ids = BYTES.encode(text)
  assert all(BYTES.OFFSET <= i < BYTES.vocab_size for i in ids)
  assert BYTES.decode(ids) == text


def test_byte_specials_distinct_and_outside_the_bytes():
  specials = [BYTES.pad_id, BYTES.bos_id, BYTES.eos_id, BYTES.token_id("<|im_start|>"),
              BYTES.token_id("<|im_end|>")]
  assert len(set(specials)) == len(specials)
  assert all(0 <= i < BYTES.OFFSET for i in specials)
  assert BYTES.vocab_size == BYTES.OFFSET + 256 == 261
  assert BYTES.encode("\x00\xff")[0] == BYTES.OFFSET
  # Text spelling a special token stays text.
  assert BYTES.encode("</s>") == [b + BYTES.OFFSET for b in b"</s>"]


def test_byte_invalid_unicode_and_ids():
  with pytest.raises(ValueError, match="lone surrogate"):
    BYTES.encode("a\ud800b")
  with pytest.raises(ValueError, match="no special token '<unk>'"):
    BYTES.token_id("<unk>")
  with pytest.raises(ValueError, match=r"ids \[261\]"):
    BYTES.decode([261])
  with pytest.raises(ValueError, match="inside the vocabulary"):
    tok_lib.ByteTokenizer(image_id=7)
  # Bytes that are not UTF-8 decode to U+FFFD; specials and placeholders are skipped or shown.
  assert BYTES.decode([BYTES.OFFSET + 0xFF]) == "\ufffd"
  ids = [BYTES.bos_id, IMAGE, IMAGE] + BYTES.encode("é") + [BYTES.eos_id]
  assert BYTES.decode(ids) == "é"
  assert BYTES.decode(ids, skip_special_tokens=False) == "<s><image><image>é</s>"


def test_hf_tokenizer_round_trip_and_specials(qwen_like):
  tok = tok_lib.HFTokenizer.from_file(qwen_like, eos="<|im_end|>", pad="<|endoftext|>")
  assert tok.bos_id is None
  assert (tok.pad_id, tok.token_id("<|im_start|>"), tok.eos_id) == (0, 1, 2)
  for text in ["What is in the picture?", "  tabs\tand\nnewlines ", "é 漢字 😀", ""]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.eos_id not in tok.encode("A red bicycle.<|im_end|>")  # Data cannot inject it.
  assert tok.decode([tok.token_id("<|im_start|>"), IMAGE] + tok.encode("hi"),
                    skip_special_tokens=False) == "<|im_start|><image>hi"
  with pytest.raises(ValueError, match="lone surrogate"):
    tok.encode("\udc80")


def test_hf_tokenizer_missing_specials_are_listed(tmp_path, qwen_like):
  with pytest.raises(ValueError) as e:
    tok_lib.HFTokenizer.from_file(qwen_like, bos="<s>", eos="</s>", pad="<|endoftext|>")
  assert "bos='<s>', eos='</s>'" in str(e.value) and "<|im_start|>" in str(e.value)
  tok = tok_lib.HFTokenizer.from_file(qwen_like, eos="<|im_end|>", pad="<|endoftext|>")
  with pytest.raises(ValueError, match="no token '<unk>'"):
    tok.token_id("<unk>")
  word = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
  with pytest.raises(ValueError, match="pad='<pad>'"):
    tok_lib.HFTokenizer(word, eos="<unk>", pad="<pad>")
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(ValueError, match="not a valid tokenizer.json"):
    tok_lib.HFTokenizer.from_file(tmp_path / "bad.json", eos="</s>", pad="</s>")
  with pytest.raises(errors.InputError, match="absent.json — no such file"):
    tok_lib.HFTokenizer.from_file(tmp_path / "absent.json", eos="</s>", pad="</s>")


# Templates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_template_renders_exactly(template):
  enc = tok_lib.encode_conversation(template, CONV, BYTES, num_images=1, num_image_tokens=N)
  text, answers = EXPECTED[template]
  assert _shown(BYTES, enc.ids) == text
  assert _answers(BYTES, enc) == answers
  assert enc.ids.dtype == enc.loss_mask.dtype == np.int32
  assert (enc.num_image_tokens, enc.truncated) == (N, False)
  # One run of N placeholders, where the tag was: right after the first user header.
  [(start, end)] = _image_runs(enc.ids)
  assert end - start == N
  assert _shown(BYTES, enc.ids[:start]).endswith({"chatml": "<|im_start|>user\n"}.get(
      template, "USER: "))
  assert not enc.loss_mask[start:end].any()


def test_chatml_with_a_qwen_tokenizer_json(qwen_like):
  tok = tok_lib.HFTokenizer.from_file(qwen_like, eos="<|im_end|>", pad="<|endoftext|>")
  enc = tok_lib.encode_conversation("chatml", CONV, tok, num_images=1, num_image_tokens=N)
  assert _shown(tok, enc.ids) == EXPECTED["chatml"][0]
  assert _answers(tok, enc) == EXPECTED["chatml"][1]


def test_plain_template():
  enc = tok_lib.encode_conversation("plain", CAPTION, BYTES, num_images=1, num_image_tokens=N)
  assert _shown(BYTES, enc.ids) == "<s><image>A red bicycle on grass.\n"
  assert _answers(BYTES, enc) == ["A red bicycle on grass.\n"]
  assert _image_runs(enc.ids) == [(1, 1 + N)]
  prompt = tok_lib.encode_prompt("plain", CAPTION[:1], BYTES, num_images=1, num_image_tokens=N)
  np.testing.assert_array_equal(prompt, [BYTES.bos_id] + [IMAGE] * N)


def test_text_only_conversation_and_roles_user_assistant():
  conv = [{"from": "user", "value": "Hi?"}, {"from": "assistant", "value": "Hello."}]
  enc = tok_lib.encode_conversation("vicuna_v1", conv, BYTES, num_images=0, num_image_tokens=N)
  assert _shown(BYTES, enc.ids) == "<s>" + VICUNA_SYSTEM + " USER: Hi? ASSISTANT: Hello.</s>"
  assert _answers(BYTES, enc) == ["Hello.</s>"]
  assert enc.num_image_tokens == 0 and not _image_runs(enc.ids)


def test_image_tag_moves_to_the_turn_start_and_several_images_stay_in_place():
  conv = [{"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A cat."}]
  enc = tok_lib.encode_conversation("chatml", conv, BYTES, num_images=1, num_image_tokens=N)
  assert "<|im_start|>user\n<image>\nDescribe it.<|im_end|>" in _shown(BYTES, enc.ids)
  conv = [{"from": "human", "value": "Compare <image> and <image>."},
          {"from": "gpt", "value": "Same."}]
  enc = tok_lib.encode_conversation("vicuna_v1", conv, BYTES, num_images=2,
                                    num_image_tokens=[2, 3], max_images=2)
  shown = BYTES.decode(enc.ids, skip_special_tokens=False)
  assert "USER: Compare <image><image> and <image><image><image>. ASSISTANT:" in shown
  assert enc.num_image_tokens == 5


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_generation_prompt_is_the_training_prefix(template):
  full = tok_lib.encode_conversation(template, CONV, BYTES, num_images=1, num_image_tokens=N)
  prompt = tok_lib.encode_prompt(template, CONV[:3], BYTES, num_images=1, num_image_tokens=N)
  last_answer_start = _runs(full.loss_mask)[-1][0]
  np.testing.assert_array_equal(prompt, full.ids[:last_answer_start])
  if template == "vicuna_v1":
    assert _shown(BYTES, prompt).endswith("</s>USER: What colour is it? ASSISTANT: ")
  with pytest.raises(tok_lib.ConversationError) as e:
    tok_lib.encode_prompt(template, CONV[:3], BYTES, num_images=1, num_image_tokens=N,
                          max_len=len(prompt) - 1)
  assert e.value.reason == "too_long"


def test_unknown_template_lists_valid_names():
  with pytest.raises(ValueError, match=r"'alpaca'; valid: \['chatml', 'llava_v1', 'plain'"):
    tok_lib.encode_conversation("alpaca", CONV, BYTES, num_images=1, num_image_tokens=N)


# Truncation -------------------------------------------------------------------------------------

# Three rounds, the image in the second: truncation may drop only the third.
LONG = [
    {"from": "human", "value": "Hello, who are you?"},
    {"from": "gpt", "value": "An assistant that describes images."},
    {"from": "human", "value": "<image>\nWhat is in the picture?"},
    {"from": "gpt", "value": "A red bicycle leaning on a wall."},
    {"from": "human", "value": "What colour is it?"},
    {"from": "gpt", "value": "Red, with black tyres."},
]


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(template=st.sampled_from(sorted(EXPECTED)), max_len=st.integers(1, 400))
def test_truncation_keeps_a_prefix_and_the_whole_image_run(template, max_len):
  def encode(turns, **kw):
    return tok_lib.encode_conversation(template, turns, BYTES, num_image_tokens=N,
                                       num_images=int(len(turns) >= 4), **kw)
  full = encode(LONG)
  round_ends = [len(encode(LONG[:2 * k]).ids) for k in (1, 2, 3)]
  shortest = _runs(full.loss_mask)[1][0] + 1  # Rounds 1-2's prompts and one answer token.
  if max_len < shortest:
    with pytest.raises(tok_lib.ConversationError) as e:
      encode(LONG, max_len=max_len)
    assert e.value.reason == "too_long"
    return
  enc = encode(LONG, max_len=max_len)
  n = len(enc.ids)
  # Whole rounds are dropped first; only then is the last answer cut.
  fitting = [end for end in round_ends[1:] if end <= max_len]
  assert n == (max(fitting) if fitting else max_len)
  np.testing.assert_array_equal(enc.ids, full.ids[:n])
  np.testing.assert_array_equal(enc.loss_mask, full.loss_mask[:n])
  assert enc.truncated == (n < len(full.ids))
  assert enc.num_image_tokens == N and [b - a for a, b in _image_runs(enc.ids)] == [N]


def test_truncation_cuts_the_answer_and_its_end_of_turn():
  full = tok_lib.encode_conversation("vicuna_v1", CONV[:2], BYTES, num_images=1,
                                     num_image_tokens=N)
  enc = tok_lib.encode_conversation("vicuna_v1", CONV[:2], BYTES, num_images=1,
                                    num_image_tokens=N, max_len=len(full.ids) - 3)
  assert enc.truncated and _answers(BYTES, enc) == ["A red bicycl"]  # Lost "e", "." and "</s>".


def test_truncation_rejects_when_the_image_cannot_fit():
  # The image is in the first round: even max_len below the image run's end cannot drop it.
  with pytest.raises(tok_lib.ConversationError) as e:
    tok_lib.encode_conversation("chatml", CONV, BYTES, num_images=1, num_image_tokens=1000,
                                max_len=512)
  assert e.value.reason == "too_long"


# Model inputs -----------------------------------------------------------------------------------


def test_model_inputs_shift_targets_and_mask():
  ids = np.array([1, 10, IMAGE, IMAGE, 11, 20, 21, 2])
  mask = np.array([0, 0, 0, 0, 0, 1, 1, 1])
  out = tok_lib.model_inputs(ids, mask, 10, pad_id=0)
  np.testing.assert_array_equal(out["tokens"], [1, 10, IMAGE, IMAGE, 11, 20, 21, 2, 0, 0])
  # Position t predicts token t + 1; a placeholder is never a target (pad_id stands in).
  np.testing.assert_array_equal(out["targets"], [10, 0, 0, 11, 20, 21, 2, 0, 0, 0])
  np.testing.assert_array_equal(out["loss_mask"], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(out["positions"], [0, 1, 2, 3, 4, 5, 6, 7, 0, 0])
  np.testing.assert_array_equal(out["segment_ids"], [1] * 8 + [0] * 2)
  assert all(v.dtype == np.int32 and v.shape == (10,) for v in out.values())
  with pytest.raises(ValueError, match="do not fit length 7"):
    tok_lib.model_inputs(ids, mask, 7, pad_id=0)


def test_model_inputs_from_a_conversation_count_exactly_the_answers():
  enc = tok_lib.encode_conversation("vicuna_v1", CONV, BYTES, num_images=1, num_image_tokens=N)
  out = tok_lib.model_inputs(enc.ids, enc.loss_mask, 320, pad_id=BYTES.pad_id)
  learned = out["targets"][out["loss_mask"] == 1]
  assert BYTES.decode(learned, skip_special_tokens=False) == (
      "A red bicycle.</s>Red, with black tyres.</s>")


# Rejections -------------------------------------------------------------------------------------


def _turns(*pairs):
  return [{"from": r, "value": v} for r, v in pairs]


@pytest.mark.parametrize("conversation, num_images, reason", [
    ("not a list", 0, "malformed"),
    ([{"from": "human"}], 0, "malformed"),
    ([], 0, "empty"),
    (_turns(("system", "Be nice."), ("gpt", "Ok.")), 0, "bad_role"),
    (_turns(("gpt", "Hi."), ("human", "Hi?")), 0, "bad_turn_order"),
    (_turns(("human", "A?"), ("human", "B?")), 0, "bad_turn_order"),
    (_turns(("human", "A?"), ("gpt", "B."), ("human", "C?")), 0, "bad_turn_order"),
    (_turns(("human", "A?"), ("gpt", " \n")), 0, "empty_answer"),
    (_turns(("human", ""), ("gpt", "B.")), 0, "empty_question"),
    (_turns(("human", "A\ud800?"), ("gpt", "B.")), 0, "invalid_text"),
    (_turns(("human", "A?"), ("gpt", "<image>")), 0, "image_in_answer"),
    (_turns(("human", "<image> and <image>"), ("gpt", "B.")), 2, "too_many_images"),
    (_turns(("human", "<image>\nA?"), ("gpt", "B.")), 0, "tag_without_image"),
    (_turns(("human", "A?"), ("gpt", "B.")), 1, "image_without_tag"),
])
def test_malformed_conversations_are_rejected_with_a_reason(conversation, num_images, reason):
  with pytest.raises(tok_lib.ConversationError) as e:
    tok_lib.encode_conversation("vicuna_v1", conversation, BYTES, num_images=num_images,
                                num_image_tokens=N)
  assert e.value.reason == reason and str(e.value).startswith(reason + ":")
  assert isinstance(e.value, ValueError)
  again = pickle.loads(pickle.dumps(e.value))  # Survives worker processes.
  assert (again.reason, str(again)) == (reason, str(e.value))


def test_plain_rejections_and_generation_turn_order():
  with pytest.raises(tok_lib.ConversationError, match="^multi_turn"):
    tok_lib.encode_conversation("plain", CONV, BYTES, num_images=1, num_image_tokens=N)
  with pytest.raises(tok_lib.ConversationError, match="^no_image"):
    tok_lib.encode_conversation("plain", CONV[2:], BYTES, num_images=0, num_image_tokens=N)
  with pytest.raises(tok_lib.ConversationError, match="^bad_turn_order"):
    tok_lib.encode_prompt("chatml", CONV, BYTES, num_images=1, num_image_tokens=N)
  with pytest.raises(ValueError, match="lists 2 counts for 1 images"):
    tok_lib.encode_conversation("chatml", CONV, BYTES, num_images=1, num_image_tokens=[1, 2])
