"""A byte-level BPE tokenizer learned from a dataset's own text: `data.tokenizer="bpe:N"`.

The byte tokenizer spends a token per character: a six-question conversation about an embedded
dataset image is about 400 text tokens beside its 196 visual ones, and the LLM's step time
follows the row's length. A BPE learned from the training split's questions, answers and
captions (Hugging Face `tokenizers`; byte-level, so any text still encodes and decodes exactly)
carries the same conversation in about 170, as a real LLM's tokenizer would (docs/results). Its
special tokens are LLaMA's (`<unk>`, the padding, as LLaVA pads; `<s>`; `</s>`) and ChatML's, so every
chat template finds its own. Learned once per dataset and vocabulary size, and cached beside the
dataset; the same text gives the same file.
"""
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from mmjax.data import tokenizer as tokenizer_lib

SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
# Below this there is room for no merge beside the 256 bytes and the specials.
MIN_VOCAB = 256 + len(SPECIALS) + 1


def _template_text() -> list[str]:
  """The text the chat templates put around every turn ("USER: ", " ASSISTANT: ", system
  prompts): as frequent as the turns, so it merges as their words do."""
  return [piece for t in tokenizer_lib.TEMPLATES.values()
          for field in ("prefix", "user_prefix", "assistant_header", "answer_end", "after")
          for piece in getattr(t, field) if isinstance(piece, str)]


def texts(source: Sequence[dict[str, Any]]) -> Iterator[str]:
  """Every text of a data source's records: the embedded dataset's questions, answers and
  captions; an ingested LLaVA JSON's turns (without their `<image>` tags); and, once per record,
  the chat templates' own text."""
  template = _template_text()
  for i in range(len(source)):
    record = source[i]
    yield from template
    if "qa" in record:
      for field in ("question", "answer"):
        yield from (text.decode() for text in record["qa"][field])
    if "caption" in record:
      yield record["caption"].decode()
    if "conversations" in record:
      for turn in json.loads(record["conversations"]):
        yield turn["value"].replace(tokenizer_lib.IMAGE_TAG, "")


def train(corpus: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE of at most `vocab_size` ids (fewer when the corpus runs out of merges)."""
  if vocab_size < MIN_VOCAB:
    raise ValueError(f"A byte-level BPE needs vocab_size >= {MIN_VOCAB} (256 bytes, the special "
                     f"tokens {list(SPECIALS)} and one merge); got {vocab_size}.")
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tok


def cached(path: str | os.PathLike, source: Callable[[], Sequence[dict[str, Any]]],
           vocab_size: int) -> pathlib.Path:
  """`path`, written first (atomically: concurrent runs may race for it) with the BPE learned
  from `source()`'s texts if it does not exist yet."""
  path = pathlib.Path(path)
  if not path.exists():
    text = train(texts(source()), vocab_size).to_str()
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
      f.write(text)
    os.replace(f.name, path)
  return path
