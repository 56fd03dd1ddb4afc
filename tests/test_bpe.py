"""The BPE learned from the dataset (`data.tokenizer="bpe:N"`): learned once and cached,
deterministic, exact round trips, far fewer tokens than bytes, the chat templates' masks, errors."""
import itertools
import pathlib

import numpy as np
import pytest

from mmjax import config_args
from mmjax.data import bpe
from mmjax.data import pipeline
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.training import build

DEFAULT = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = config_args.get_config(DEFAULT, "size=tiny")
  c.data.data_dir = str(tmp_path_factory.mktemp("tfds"))
  c.data.tokenizer = "bpe:1024"
  return c


def test_learned_once_beside_the_dataset_and_the_same_from_the_same_text(config):
  tok = build.tokenizer(config)
  path = build.dataset_dir(config) / "bpe1024.json"
  learned, mtime = path.read_text(), path.stat().st_mtime_ns
  assert bpe.MIN_VOCAB < tok.vocab_size <= 1024
  assert build.tokenizer(config).vocab_size == tok.vocab_size
  assert path.stat().st_mtime_ns == mtime  # Read, not learned again.
  assert bpe.train(bpe.texts(build.data_source(config, "train")), 1024).to_str() == learned


def test_round_trips_exactly_in_under_40_percent_of_the_byte_tokens(config):
  tok, byte = build.tokenizer(config), tokenizer_lib.ByteTokenizer()
  source = build.data_source(config, "validation")
  for text in itertools.chain(itertools.islice(bpe.texts(source), 300),
                              ["Zürich, 東京 and 🙂 — never seen", "a </s> in the text"]):
    assert tok.decode(tok.encode(text)) == text
  assert tok.eos_id not in tok.encode("a </s> in the text")  # Data cannot inject a special.
  record = source[0]
  conversation = pipeline.conversation_of(record, "vqa", np.random.default_rng(0))
  lengths = [len(tokenizer_lib.encode_conversation("vicuna_short", conversation, t,
                                                   num_images=1, num_image_tokens=4).ids)
             for t in (tok, byte)]
  assert lengths[0] < lengths[1] / 2.5, lengths


@pytest.mark.parametrize("template", ["vicuna_short", "chatml"])
def test_templates_mask_exactly_the_answers(config, template):
  tok = build.tokenizer(config)
  conversation = [{"from": "human", "value": "<image>\nWhat colour is the box?"},
                  {"from": "gpt", "value": "red and cyan"},
                  {"from": "human", "value": "How many marks?"}, {"from": "gpt", "value": "3"}]
  encoded = tokenizer_lib.encode_conversation(template, conversation, tok, num_images=1,
                                              num_image_tokens=4)
  ids = np.asarray(encoded.ids)
  answers = tok.decode(ids[np.asarray(encoded.loss_mask, bool)], skip_special_tokens=False)
  end = "</s>" if template == "vicuna_short" else "<|im_end|>"
  assert answers == f"red and cyan{end}3{end}"
  assert np.sum(ids == tokenizer_lib.IMAGE_ID) == 4


def test_bad_vocabulary_sizes_are_refused(config):
  c = config.copy_and_resolve_references()
  c.data.tokenizer = "bpe:many"
  with pytest.raises(ValueError, match=r"data.tokenizer='bpe:many': 'bpe:N' takes a vocabulary"):
    build.tokenizer(c)
  with pytest.raises(ValueError, match=rf"vocab_size >= {bpe.MIN_VOCAB} .*; got 100"):
    bpe.train(["some text"], 100)
