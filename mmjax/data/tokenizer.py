"""Tokenizers and chat templates: LLaVA-format conversations → token ids and an answer-only mask.

A conversation is LLaVA's JSON list of turns,
  [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}, ...],
roles "human"/"gpt" (or "user"/"assistant"), alternating, starting with the human. Each `<image>`
tag becomes a run of `image_id` placeholders, one per visual token (`MLLMConfig.image_token_id`);
the model writes the image's visual tokens into that run.

`encode_conversation` renders a conversation with a template from `TEMPLATES` into `ids` and a
`loss_mask` that is 1 exactly on the answer tokens and the end-of-turn token(s) that close them,
truncating to `max_len` (rule in its docstring); `model_inputs` turns that into one row of the
batch `mmjax.models.mllm` consumes; `encode_prompt` gives the generation prompt for evaluation.
Unusable samples raise `ConversationError`, whose `reason` the ingestion report counts.

Templates encode each text piece separately and insert special tokens by id, so the loss mask
falls on token boundaries by construction and text that spells a special token ("</s>",
"<|im_end|>") stays plain text. For byte-level tokenizers (`ByteTokenizer`; GPT-2 / Qwen /
LLaMA-3-style byte-level BPE) the decoded ids equal the rendered text exactly; a SentencePiece-style
tokenizer that prepends "▁" to every encoded text would add a space at each piece boundary.
"""
import abc
import dataclasses
import hashlib
import os
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import tokenizers

from mmjax import files

IMAGE_TAG = "<image>"  # The image's place in LLaVA-format text.
IMAGE_ID = -200  # LLaVA's IMAGE_TOKEN_INDEX: outside every vocabulary.


def _utf8(text: str, what: str) -> bytes:
  """`text` as UTF-8; ValueError for a lone surrogate, which `json.loads` accepts ("\\ud800")."""
  if not isinstance(text, str):
    raise ValueError(f"{what} must be a str, got {type(text).__name__}.")
  try:
    return text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise ValueError(f"{what} is not valid Unicode: lone surrogate {text[e.start]!r} at index "
                     f"{e.start} has no UTF-8 encoding.") from None


class Tokenizer(abc.ABC):
  """Text ↔ token ids. Subclasses set these attributes:

  Attributes:
    vocab_size: real token ids lie in [0, vocab_size) (the model's embedding table may be larger).
    bos_id: the beginning-of-sequence id, or None for tokenizers without one (Qwen).
    eos_id: the end-of-sequence id; templates use it as LLaMA's "</s>".
    pad_id: fills padding and the targets that have no next token.
    image_id: the placeholder of one visual token, outside [0, vocab_size): never produced by
      `encode`, dropped (or shown as `<image>`) by `decode`.
  """
  vocab_size: int
  bos_id: int | None
  eos_id: int
  pad_id: int
  image_id: int

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """The ids of `text`, no special tokens added.

    Text spelling a special token ("</s>") is encoded as plain text, so data cannot inject one.
    Raises ValueError for text that is not valid Unicode (a lone surrogate).
    """

  @abc.abstractmethod
  def fingerprint(self) -> str:
    """A short string that identifies the vocabulary (runs record it)."""

  @abc.abstractmethod
  def token_id(self, token: str) -> int:
    """The id of a special token by its string (e.g. "<|im_end|>"); ValueError listing the known
    ones if absent."""

  @abc.abstractmethod
  def _decode_text(self, ids: list[int], skip_special_tokens: bool) -> str:
    """`decode` of ids that are all in [0, vocab_size)."""

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """The text of `ids`: specials and image placeholders are skipped, or, with
    `skip_special_tokens=False`, shown as their strings and one `<image>` per placeholder."""
    ids = [int(i) for i in ids]
    bad = sorted({i for i in ids if i != self.image_id and not 0 <= i < self.vocab_size})
    if bad:
      raise ValueError(f"Cannot decode ids {bad[:10]}: outside the vocabulary "
                       f"[0, {self.vocab_size}) and not the image placeholder {self.image_id}.")
    text, run = [], []
    for i in ids:
      if i != self.image_id:
        run.append(i)
        continue
      # Decode the text around each placeholder separately: it is not a token the backend knows.
      text.append(self._decode_text(run, skip_special_tokens))
      run = []
      if not skip_special_tokens:
        text.append(IMAGE_TAG)
    text.append(self._decode_text(run, skip_special_tokens))
    return "".join(text)

  def _check_image_id(self) -> None:
    if 0 <= self.image_id < self.vocab_size:
      raise ValueError(f"image_id={self.image_id} lies inside the vocabulary "
                       f"[0, {self.vocab_size}); use an id outside it, as LLaVA's {IMAGE_ID}.")


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes as tokens: the embedded default, no vocabulary file.

  Id layout (vocab_size 261): the special tokens first, so padding is id 0, then the bytes:
    0 "<pad>", 1 "<s>" (bos), 2 "</s>" (eos), 3 "<|im_start|>", 4 "<|im_end|>",
    5 + b for byte b in 0..255.
  The ChatML specials carry Qwen's strings, so templates find them by the same names here and in
  a Qwen `tokenizer.json`.

  `encode` is strict UTF-8: a lone surrogate raises ValueError instead of yielding bytes that no
  valid text has, so `decode(encode(s)) == s` for every string `encode` accepts. `decode` turns
  byte sequences that are not UTF-8 (a model can emit them) into U+FFFD.
  """
  SPECIALS = ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
  OFFSET = len(SPECIALS)  # Id of byte 0.

  def __init__(self, image_id: int = IMAGE_ID):
    self.vocab_size = self.OFFSET + 256
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    self.image_id = image_id
    self._check_image_id()

  def encode(self, text: str) -> list[int]:
    return [b + self.OFFSET for b in _utf8(text, "text")]

  def fingerprint(self) -> str:
    """What identifies the vocabulary (a run records it: resuming with another is refused)."""
    return "byte"

  def token_id(self, token: str) -> int:
    if token not in self.SPECIALS:
      raise ValueError(f"ByteTokenizer has no special token {token!r}; valid: "
                       f"{list(self.SPECIALS)}.")
    return self.SPECIALS.index(token)

  def _decode_text(self, ids: list[int], skip_special_tokens: bool) -> str:
    text, run = [], bytearray()
    for i in ids:
      if i >= self.OFFSET:
        run.append(i - self.OFFSET)
        continue
      text.append(run.decode("utf-8", errors="replace"))
      run = bytearray()
      if not skip_special_tokens:
        text.append(self.SPECIALS[i])
    text.append(run.decode("utf-8", errors="replace"))
    return "".join(text)


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json` through the `tokenizers` package.

  `encode` adds no specials and ignores the file's truncation and padding settings; special
  tokens are matched as plain text, never turned into their ids.
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, eos: str, pad: str,
               bos: str | None = None, image_id: int = IMAGE_ID, source: str = "tokenizer"):
    """Wraps a copy of `tokenizer`; bos / eos / pad name its special tokens by string (bos None:
    the model has no bos, as Qwen). `source` names the tokenizer in error messages."""
    # A copy, so that switching off truncation, padding and special-token matching does not
    # change the caller's object.
    self._tok = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    self._tok.no_truncation()
    self._tok.no_padding()
    self._tok.encode_special_tokens = True
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    wanted = {"bos": bos, "eos": eos, "pad": pad}
    ids = {role: self._tok.token_to_id(token) for role, token in wanted.items()
           if token is not None}
    missing = [f"{role}={wanted[role]!r}" for role, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{source} lacks the special tokens {', '.join(missing)}; its added "
                       f"tokens are {self._added_tokens()}.")
    self.bos_id = ids.get("bos")
    self.eos_id, self.pad_id = ids["eos"], ids["pad"]
    self.image_id = image_id
    self._check_image_id()

  @classmethod
  def from_file(cls, path: str | os.PathLike, *, eos: str, pad: str, bos: str | None = None,
                image_id: int = IMAGE_ID) -> "HFTokenizer":
    """Loads a `tokenizer.json`, e.g. LLaMA/Vicuna: bos="<s>", eos="</s>", pad="<unk>" (LLaVA
    pads with unk); Qwen2: bos=None, eos="<|im_end|>", pad="<|endoftext|>"."""
    path = os.fspath(files.regular_file(path, "tokenizer file"))
    try:
      tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # `tokenizers` raises a bare Exception for unreadable files.
      raise ValueError(f"{path} is not a valid tokenizer.json: {e}") from None
    return cls(tok, bos=bos, eos=eos, pad=pad, image_id=image_id, source=path)

  def fingerprint(self) -> str:
    """What identifies the vocabulary: a hash of the tokenizer's JSON."""
    return "sha256:" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

  def encode(self, text: str) -> list[int]:
    _utf8(text, "text")  # The backend would raise a TypeError that does not say why.
    return self._tok.encode(text, add_special_tokens=False).ids

  def token_id(self, token: str) -> int:
    i = self._tok.token_to_id(token)
    if i is None:
      raise ValueError(f"Tokenizer has no token {token!r}; its added tokens are "
                       f"{self._added_tokens()}.")
    return i

  def _decode_text(self, ids: list[int], skip_special_tokens: bool) -> str:
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

  def _added_tokens(self) -> str:
    """The added tokens for error messages; the first 30 (LLaMA-3 reserves hundreds)."""
    added = [t.content for _, t in sorted(self._tok.get_added_tokens_decoder().items())]
    return str(added[:30]) + (f" and {len(added) - 30} more" if len(added) > 30 else "")


# Conversations ----------------------------------------------------------------------------------

REASONS = ("malformed", "empty", "bad_role", "bad_turn_order", "empty_question", "empty_answer",
           "invalid_text", "image_in_answer", "too_many_images", "tag_without_image",
           "image_without_tag", "multi_turn", "no_image", "too_long")


class ConversationError(ValueError):
  """A sample that cannot be used; `reason` (one of REASONS) is what ingestion counts rejects by.

  malformed: turns are not {"from": str, "value": str} dicts in a list; empty: no turns;
  bad_role: a role other than human/user/gpt/assistant; bad_turn_order: not human, gpt, human, …
  ending with gpt (with human for a generation prompt); empty_question / empty_answer: blank
  text (a question that is only `<image>` is fine); invalid_text: a lone surrogate;
  image_in_answer: `<image>` in a gpt turn; too_many_images: more tags than `max_images`;
  tag_without_image / image_without_tag: more tags than images given, or fewer; multi_turn /
  no_image: the `plain` template takes one round with an image; too_long: no truncation fits.
  """

  def __init__(self, reason: str, message: str):
    if reason not in REASONS:
      raise ValueError(f"Unknown rejection reason {reason!r}; valid: {list(REASONS)}.")
    super().__init__(f"{reason}: {message}")
    self.reason, self.message = reason, message

  def __reduce__(self):  # Pickles across worker processes despite the two-argument constructor.
    return ConversationError, (self.reason, self.message)


_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _rounds(conversation: Sequence[Mapping[str, str]], for_generation: bool
            ) -> list[tuple[str, str | None]]:
  """Validated (question, answer) pairs; the last answer is None for a generation prompt."""
  if not isinstance(conversation, (list, tuple)) or not all(
      isinstance(t, Mapping) and isinstance(t.get("from"), str) and
      isinstance(t.get("value"), str) for t in conversation):
    raise ConversationError("malformed", "a conversation is a list of {'from': str, "
                            "'value': str} turns.")
  if not conversation:
    raise ConversationError("empty", "the conversation has no turns.")
  roles = []
  for n, turn in enumerate(conversation):
    if turn["from"] not in _ROLES:
      raise ConversationError("bad_role", f"turn {n} has role {turn['from']!r}; valid: "
                              f"{sorted(_ROLES)}.")
    roles.append(_ROLES[turn["from"]])
  expected = ["human", "gpt"] * (len(roles) // 2) + ["human"] * (len(roles) % 2)
  if roles != expected or (len(roles) % 2 == 1) != for_generation:
    last = "human (a generation prompt)" if for_generation else "gpt"
    raise ConversationError("bad_turn_order", f"roles {roles} must alternate human, gpt, … "
                            f"starting with human and ending with {last}.")
  for n, turn in enumerate(conversation):
    try:
      _utf8(turn["value"], f"turn {n}")
    except ValueError as e:
      raise ConversationError("invalid_text", str(e)) from None
    if roles[n] == "gpt" and IMAGE_TAG in turn["value"]:
      raise ConversationError("image_in_answer", f"turn {n} (gpt) holds {IMAGE_TAG}.")
    if not turn["value"].strip():
      kind = "empty_question" if roles[n] == "human" else "empty_answer"
      raise ConversationError(kind, f"turn {n} ({roles[n]}) is blank.")
  values = [turn["value"] for turn in conversation] + [None] * for_generation
  return list(zip(values[::2], values[1::2]))


def _place_image(question: str) -> str:
  """LLaVA's `preprocess_multimodal` (LLaVA-NeXT/OneVision form): a turn with exactly one
  `<image>` tag gets it moved to the front, followed by "\\n"; several tags stay in place."""
  if question.count(IMAGE_TAG) != 1 or question.startswith(IMAGE_TAG):
    return question
  return (IMAGE_TAG + "\n" + question.replace(IMAGE_TAG, "").strip()).strip()


# Templates --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Special:
  """A special token in a template: "bos" / "eos" (the tokenizer's ids; bos is left out when the
  tokenizer has none) or a token string looked up with `Tokenizer.token_id`."""
  token: str


Piece = str | Special
BOS, EOS = Special("bos"), Special("eos")
IM_START, IM_END = Special("<|im_start|>"), Special("<|im_end|>")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A conversation layout:

    prefix, then per round: user_prefix question assistant_header | answer answer_end | after,

  the loss covering `answer answer_end` (the end-of-turn the model must learn to emit).
  `assistant_header` closes the user turn and opens the assistant's: a generation prompt ends
  with it.
  """
  name: str
  prefix: tuple[Piece, ...]
  user_prefix: tuple[Piece, ...]
  assistant_header: tuple[Piece, ...]
  answer_end: tuple[Piece, ...]
  after: tuple[Piece, ...] = ()
  keep_question: bool = True  # False: only the question's images are kept (LLaVA's plain).
  single_image_round: bool = False  # Only one round, holding at least one image (plain).


def _system_two(system: str) -> dict[str, tuple[Piece, ...]]:
  """LLaVA's SeparatorStyle.TWO, roles USER / ASSISTANT, sep " ", sep2 "</s>":
  `SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>` after bos.

  The generation prompt ends "ASSISTANT: " — with the space the training text has before every
  answer — where LLaVA's `get_prompt` ends "ASSISTANT:" (with SentencePiece that space is the
  "▁" of the answer's first token; with byte-level tokens it is a token of its own).
  """
  return dict(prefix=(BOS, system + " "), user_prefix=("USER: ",),
              assistant_header=(" ASSISTANT: ",), answer_end=(EOS,))


TEMPLATES: dict[str, ChatTemplate] = {
    # LLaVA-1.5's `--version v1` (conv_vicuna_v1).
    "vicuna_v1": ChatTemplate("vicuna_v1", **_system_two(
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions.")),
    # vicuna_v1's layout without the system prompt: ~150 fewer tokens per sample, for byte-level
    # models trained from scratch (the embedded dataset on a CPU).
    "vicuna_short": ChatTemplate("vicuna_short", prefix=(BOS,), user_prefix=("USER: ",),
                                 assistant_header=(" ASSISTANT: ",), answer_end=(EOS,)),
    # LLaVA's conv_llava_v1: the same layout, the system prompt says "human".
    "llava_v1": ChatTemplate("llava_v1", **_system_two(
        "A chat between a curious human and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the human's questions.")),
    # Qwen / LLaVA-OneVision (conv_qwen_1_5); no bos. The "\n" after an answer's <|im_end|> is
    # outside the loss, as in Qwen's chat-template assistant mask.
    "chatml": ChatTemplate(
        "chatml", prefix=(IM_START, "system\nYou are a helpful assistant.", IM_END, "\n"),
        user_prefix=(IM_START, "user\n"),
        assistant_header=(IM_END, "\n", IM_START, "assistant\n"), answer_end=(IM_END,),
        after=("\n",)),
    # LLaVA's pretraining (preprocess_plain): bos, the image, the caption and "\n"; the human
    # text is dropped and the loss covers the caption and its "\n".
    "plain": ChatTemplate("plain", prefix=(BOS,), user_prefix=(), assistant_header=(),
                          answer_end=("\n",), keep_question=False, single_image_round=True),
}


def get_template(name: str) -> ChatTemplate:
  if name not in TEMPLATES:
    raise ValueError(f"Unknown chat template {name!r}; valid: {sorted(TEMPLATES)}.")
  return TEMPLATES[name]


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A rendered conversation.

  Attributes:
    ids: int32 [n] token ids, `image_id` once per visual token.
    loss_mask: int32 [n], 1 on the answer tokens (and their end-of-turn tokens), 0 elsewhere.
    num_image_tokens: how many placeholders `ids` holds (all images' tokens).
    truncated: whether rounds were dropped or the last answer cut to fit `max_len`.
  """
  ids: np.ndarray
  loss_mask: np.ndarray
  num_image_tokens: int
  truncated: bool


@dataclasses.dataclass(frozen=True)
class _Round:
  prompt: list[int]  # user_prefix, question (with image runs), assistant_header.
  answer: list[int]  # answer, answer_end: the loss tokens.
  after: list[int]
  has_image: bool


def _pieces(tokenizer: Tokenizer, pieces: Sequence[Piece]) -> list[int]:
  ids = []
  for piece in pieces:
    if isinstance(piece, str):
      ids += tokenizer.encode(piece)
    elif piece == BOS:
      ids += [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    elif piece == EOS:
      ids.append(tokenizer.eos_id)
    else:
      ids.append(tokenizer.token_id(piece.token))
  return ids


def _question(tokenizer: Tokenizer, template: ChatTemplate, question: str,
              counts: Iterator[int]) -> list[int]:
  """The question's ids, each `<image>` tag replaced by its image's run of placeholders."""
  chunks = _place_image(question).split(IMAGE_TAG)
  ids = tokenizer.encode(chunks[0]) if template.keep_question else []
  for chunk in chunks[1:]:
    ids += [tokenizer.image_id] * next(counts)
    ids += tokenizer.encode(chunk) if template.keep_question else []
  return ids


def _render(template: str, conversation: Sequence[Mapping[str, str]], tokenizer: Tokenizer, *,
            num_images: int, num_image_tokens: int | Sequence[int], max_images: int,
            for_generation: bool) -> tuple[list[int], list[_Round]]:
  """Validates the conversation and encodes the template's prefix and each round."""
  tmpl = get_template(template)
  if np.ndim(num_image_tokens) == 0:
    counts = [int(num_image_tokens)] * num_images
  else:
    counts = [int(c) for c in num_image_tokens]
    if len(counts) != num_images:
      raise ValueError(f"num_image_tokens lists {len(counts)} counts for {num_images} images.")
  if num_images < 0 or max_images < 1 or any(c < 1 for c in counts):
    raise ValueError(f"Need num_images >= 0, max_images >= 1 and >= 1 token per image; got "
                     f"num_images={num_images}, max_images={max_images}, counts={counts}.")
  rounds = _rounds(conversation, for_generation)
  tags = sum(q.count(IMAGE_TAG) for q, _ in rounds)
  if tags > max_images:
    raise ConversationError("too_many_images", f"{tags} {IMAGE_TAG} tags, at most "
                            f"max_images={max_images}.")
  if tags != num_images:
    reason = "tag_without_image" if tags > num_images else "image_without_tag"
    raise ConversationError(reason, f"{tags} {IMAGE_TAG} tags for {num_images} images.")
  if tmpl.single_image_round and len(rounds) != 1:
    raise ConversationError("multi_turn", f"template {tmpl.name!r} takes one round, got "
                            f"{len(rounds)}.")
  if tmpl.single_image_round and not num_images:
    raise ConversationError("no_image", f"template {tmpl.name!r} needs an image.")
  image_counts = iter(counts)
  rendered = []
  for question, answer in rounds:
    prompt = (_pieces(tokenizer, tmpl.user_prefix) +
              _question(tokenizer, tmpl, question, image_counts) +
              _pieces(tokenizer, tmpl.assistant_header))
    answer_ids, after = [], []
    if answer is not None:
      answer_ids = tokenizer.encode(answer) + _pieces(tokenizer, tmpl.answer_end)
      after = _pieces(tokenizer, tmpl.after)
    rendered.append(_Round(prompt, answer_ids, after, IMAGE_TAG in question))
  return _pieces(tokenizer, tmpl.prefix), rendered


def _check_max_len(max_len: int | None) -> None:
  if max_len is not None and max_len < 1:
    raise ValueError(f"max_len must be positive or None, got {max_len}.")


def encode_conversation(template: str, conversation: Sequence[Mapping[str, str]],
                        tokenizer: Tokenizer, *, num_images: int,
                        num_image_tokens: int | Sequence[int], max_len: int | None = None,
                        max_images: int = 1) -> Encoded:
  """Renders a training conversation (ending with a gpt turn) with template `template`.

  Args:
    template: a name in TEMPLATES.
    conversation: LLaVA-format turns.
    tokenizer: encodes the text.
    num_images: how many images the sample has; must equal its number of `<image>` tags.
    num_image_tokens: visual tokens per image: one count for all, or one per image in order.
    max_len: the most ids to return (None: no limit).
    max_images: the most `<image>` tags a conversation may hold.

  Truncation to `max_len` only ever keeps a prefix of the full ids: (1) whole rounds are dropped
  from the end, but never the first round nor one holding an image (image runs stay whole and
  every image keeps its placeholders); (2) if still too long, the tail is cut, which must leave
  at least one token of the last kept round's answer (a cut answer loses its end-of-turn token,
  so the model does not learn to stop there). If that cannot be met the sample is rejected with
  reason "too_long".

  Raises:
    ConversationError: the sample is unusable (see REASONS).
    ValueError: bad arguments (unknown template, counts that do not match `num_images`, …).
  """
  _check_max_len(max_len)
  prefix, rounds = _render(template, conversation, tokenizer, num_images=num_images,
                           num_image_tokens=num_image_tokens, max_images=max_images,
                           for_generation=False)
  sizes = [len(r.prompt) + len(r.answer) + len(r.after) for r in rounds]
  ends = np.cumsum([len(prefix)] + sizes)  # ends[k]: length with the first k rounds.
  keep = len(rounds)
  if max_len is not None:
    min_keep = max([1] + [k + 1 for k, r in enumerate(rounds) if r.has_image])
    while keep > min_keep and ends[keep] > max_len:
      keep -= 1
    last = rounds[keep - 1]
    if ends[keep - 1] + len(last.prompt) + 1 > max_len:
      need = ends[keep - 1] + len(last.prompt) + 1
      raise ConversationError("too_long", f"max_len={max_len} < {need} tokens: rounds 1-{keep} "
                              "(those up to the last image) to one token of the last answer.")
  ids, mask = list(prefix), [0] * len(prefix)
  for r in rounds[:keep]:
    ids += r.prompt + r.answer + r.after
    mask += [0] * len(r.prompt) + [1] * len(r.answer) + [0] * len(r.after)
  truncated = keep < len(rounds) or (max_len is not None and len(ids) > max_len)
  if max_len is not None:
    ids, mask = ids[:max_len], mask[:max_len]
  ids = np.asarray(ids, np.int32)
  return Encoded(ids=ids, loss_mask=np.asarray(mask, np.int32),
                 num_image_tokens=int(np.sum(ids == tokenizer.image_id)), truncated=truncated)


def encode_prompt(template: str, conversation: Sequence[Mapping[str, str]],
                  tokenizer: Tokenizer, *, num_images: int,
                  num_image_tokens: int | Sequence[int], max_len: int | None = None,
                  max_images: int = 1) -> np.ndarray:
  """The int32 [n] generation prompt of a conversation ending with a human turn: earlier rounds
  in full, then the last question and the assistant's header — exactly the ids that precede that
  answer in `encode_conversation`. Arguments as there; a prompt longer than `max_len` raises
  ConversationError("too_long") (a question is never cut)."""
  _check_max_len(max_len)
  prefix, rounds = _render(template, conversation, tokenizer, num_images=num_images,
                           num_image_tokens=num_image_tokens, max_images=max_images,
                           for_generation=True)
  ids = prefix + [i for r in rounds for i in r.prompt + r.answer + r.after]
  if max_len is not None and len(ids) > max_len:
    raise ConversationError("too_long", f"the prompt has {len(ids)} tokens, max_len={max_len}.")
  return np.asarray(ids, np.int32)


def model_inputs(ids: np.ndarray, loss_mask: np.ndarray, length: int, *, pad_id: int,
                 image_id: int = IMAGE_ID) -> dict[str, np.ndarray]:
  """One unpacked row of the model's batch, each int32 [length]:

  tokens: `ids`, then `pad_id`. targets: the next token (targets[t] = ids[t + 1]); `pad_id` where
  there is none or it is an image placeholder, so every target is a vocabulary id.
  loss_mask: loss_mask[t] = the input loss_mask[t + 1], i.e. position t counts iff it predicts an
  answer token. positions: 0, 1, … on the tokens, 0 on padding. segment_ids: 1 on the tokens,
  0 on padding.
  """
  ids, loss_mask = np.asarray(ids), np.asarray(loss_mask)
  if ids.ndim != 1 or ids.shape != loss_mask.shape:
    raise ValueError(f"ids {ids.shape} and loss_mask {loss_mask.shape} must be equal-length "
                     "vectors.")
  n = len(ids)
  if n > length:
    raise ValueError(f"{n} ids do not fit length {length}; truncate with max_len={length}.")
  tokens = np.full(length, pad_id, np.int32)
  tokens[:n] = ids
  targets = np.full(length, pad_id, np.int32)
  targets[:max(n - 1, 0)] = np.where(ids[1:] == image_id, pad_id, ids[1:])
  mask = np.zeros(length, np.int32)
  mask[:max(n - 1, 0)] = loss_mask[1:]
  real = np.arange(length) < n
  return {"tokens": tokens, "targets": targets, "loss_mask": mask,
          "positions": np.where(real, np.arange(length), 0).astype(np.int32),
          "segment_ids": real.astype(np.int32)}
