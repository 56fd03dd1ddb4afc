"""A Hugging Face checkpoint's input processing, read from its folder without transformers: the
tokenizer (`tokenizer.json`, through the `tokenizers` library), the chat template (jinja2, in a
sandbox, rendered as transformers renders it), the image processor, and the expansion of each image
marker into as many image tokens as the model's tower gives.

Given the same images and text, `Processor.__call__` returns the `input_ids` and `pixel_values` of
the transformers processor saved in that folder (pixels channels-last, mmjax's layout); tests
compare them (`tests/test_hf_processor.py`, `tests/test_qwen2_vl_processor.py`). Supported:
LLaVA-1.5's (`LlavaProcessor` with a `CLIPImageProcessor`) and Qwen2-VL's (`Qwen2VLProcessor`:
native-resolution patches, and the M-RoPE `position_ids` its model computes from the ids).

Files read (as transformers 5 saves them, or as the public checkpoints hold them):
  tokenizer.json                    the tokenizer, its special tokens and post-processor (BOS);
  tokenizer_config.json             special token strings, `clean_up_tokenization_spaces`, and
                                    the chat template in older checkpoints;
  chat_template.jinja / .json       the chat template;
  processor_config.json             the processor's fields (`patch_size`, `image_token`, …) and,
                                    from transformers 5, the image processor's;
  preprocessor_config.json          the image processor's, in older checkpoints;
  config.json                       the model type, where it is not given.
The image processor itself is `mmjax.data.hf_image_processors`.
"""
import dataclasses
import datetime
import json
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors

from mmjax import errors
from mmjax import files
from mmjax.data import hf_image_processors
from mmjax.data import mrope
from mmjax.data import resolution

# The files `Processor.from_dir` may read; a conversion copies them beside the weights.
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "chat_template.jinja", "chat_template.json", "processor_config.json",
         "preprocessor_config.json", "generation_config.json")
MAX_FILE_BYTES = 256 << 20  # A tokenizer.json is megabytes.
SELECT_STRATEGIES = ("default", "full")
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")
# Tokenizer classes that use tokenizer.json as it is saved.
_AS_SAVED = ("PreTrainedTokenizerFast", "TokenizersBackend")
_LLAMA, _QWEN2 = "LlamaTokenizer", "Qwen2Tokenizer"
TOKENIZER_CLASSES = _AS_SAVED + (_LLAMA, _QWEN2)
# transformers 5.23's Qwen2Tokenizer pre-tokenisation (models/qwen2/tokenization_qwen2.py).
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# transformers 5.23's AutoTokenizer (models/auto/tokenization_auto.py): the tokenizer class its
# registry gives a model type, and the model types whose checkpoints' declared class it
# overrides (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), for the types mmjax converts.
_REGISTERED = {"llava": "TokenizersBackend", "llava_next": "TokenizersBackend",
               "qwen2_vl": "Qwen2Tokenizer", "internvl": "Qwen2Tokenizer",
               "qwen2": "Qwen2Tokenizer"}
_HUB_CLASS_OVERRIDDEN = ("llava", "llava_next", "qwen2")


@dataclasses.dataclass(frozen=True)
class _Model:
  """How a model type's processor marks images: the marker token (unless processor_config.json
  names one), how many tokens each image's marker becomes, and whether its decoder reads M-RoPE
  positions (which the model computes from the ids and the image grids)."""
  image_token: str
  count: Any  # (Processor, image processor outputs) → tokens per image.
  mrope: bool = False
  # Named special tokens (tokenizer_config.json's `extra_special_tokens`, with their defaults)
  # around each image's tokens: the one before and the one after.
  around: tuple[tuple[str, str], tuple[str, str]] | None = None


def _llava_count(processor: "Processor", outputs: dict[str, np.ndarray]) -> list[int]:
  """LLaVA: a token per patch of the (fixed-size) image, plus the extra (class) tokens the
  processor counts, less the class token the "default" strategy drops."""
  patch = processor.patch_size
  return [(h // patch) * (w // patch) + processor.extra_tokens - (processor.strategy == "default")
          for h, w in (p.shape[:2] for p in outputs["pixel_values"])]


def _qwen2_vl_count(processor: "Processor", outputs: dict[str, np.ndarray]) -> list[int]:
  return processor.image.tokens(outputs)


def _anyres_count(processor: "Processor", outputs: dict[str, np.ndarray], base: int, grid: int,
                  max_crops: int) -> list[int]:
  """AnyRes: the whole image's `base` tokens, then the unpadded (for OneVision, shrunk) map of
  the crops with a newline token a row (`resolution.onevision_plan`, the model's own rule)."""
  image = processor.image
  return [base + len(resolution.onevision_plan(int(h), int(w), image.pinpoints, image.crop, grid,
                                               max_crops)[2])
          for h, w in outputs["image_sizes"]]


def _llava_next_count(processor: "Processor", outputs: dict[str, np.ndarray]) -> list[int]:
  """LLaVA-NeXT: the base view's patches plus the extra (class) tokens counted, less the one the
  "default" strategy drops; the whole unpadded map."""
  grid = processor.image.crop // processor.patch_size
  base = grid * grid + processor.extra_tokens - (processor.strategy == "default")
  return _anyres_count(processor, outputs, base, grid, 0)


def _onevision_count(processor: "Processor", outputs: dict[str, np.ndarray]) -> list[int]:
  """LLaVA-OneVision: `num_image_tokens` for the base view and the map shrunk to
  `anyres_max_<n>`; with several images a prompt, each its one view and a newline."""
  tokens = int(processor.fields.get("num_image_tokens") or 0)
  if not tokens:
    raise ValueError(f"{processor.directory} gives no num_image_tokens: the image token count is "
                     "unknown.")
  drop = processor.strategy == "default"
  if len(outputs["image_sizes"]) > 1:
    return [tokens + 1 - drop] * len(outputs["image_sizes"])
  aspect = str(processor.fields.get("vision_aspect_ratio", "anyres_max_9"))
  if not aspect.startswith("anyres_max_") or not aspect[11:].isdigit():
    raise ValueError(f"processor vision_aspect_ratio={aspect!r} is not supported; valid: "
                     "'anyres_max_<n>'.")
  return _anyres_count(processor, outputs, tokens - drop, math.isqrt(tokens), int(aspect[11:]))


def _internvl_count(processor: "Processor", outputs: dict[str, np.ndarray]) -> list[int]:
  """InternVL: `image_seq_length` tokens a tile."""
  per_tile = int(processor.fields.get("image_seq_length", 256))
  return [per_tile * int(n) for n in outputs["num_patches"]]


_MODELS = {"llava": _Model("<image>", _llava_count),
           "internvl": _Model("<IMG_CONTEXT>", _internvl_count,
                              around=(("start_image_token", "<img>"),
                                      ("end_image_token", "</img>"))),
           "llava_next": _Model("<image>", _llava_next_count),
           "llava_onevision": _Model("<image>", _onevision_count),
           "qwen2_vl": _Model("<|image_pad|>", _qwen2_vl_count, mrope=True)}
MODEL_TYPES = tuple(sorted(_MODELS))


def tokenizer_class(model_type: str | None, declared: str | None, byte_level: bool) -> str:
  """The tokenizer class transformers' AutoTokenizer loads for a checkpoint of `model_type`
  whose tokenizer_config.json declares `declared`: the declared class unless the model type's
  registered class differs (then the registered one for overridden types, and tokenizer.json as
  saved when that is a generic class); a declared LlamaTokenizer over a byte-level tokenizer.json
  (LLaMA-3 style) loads as saved too."""
  declared = (declared or "TokenizersBackend").removesuffix("Fast")
  registered = _REGISTERED.get(model_type or "")
  if declared == _LLAMA and byte_level and model_type not in _HUB_CLASS_OVERRIDDEN:
    return "TokenizersBackend"
  if registered is None or registered == declared:
    return declared
  if registered in _AS_SAVED:
    return "TokenizersBackend"
  return registered if model_type in _HUB_CLASS_OVERRIDDEN else declared


# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")


def _add_missing_special_tokens(tok: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
  """As transformers 5 does on loading: the special tokens tokenizer_config.json names (the
  named ones, then `extra_special_tokens` / `additional_special_tokens`) that tokenizer.json
  lacks are added at the end of the vocabulary, in that order, as special tokens."""
  names = [_token_text(config.get(k)) for k in _NAMED_SPECIAL]
  for key in ("extra_special_tokens", "additional_special_tokens"):
    extra = config.get(key) or ()
    names += [_token_text(x) for x in (extra.values() if isinstance(extra, dict) else extra)]
  missing = [n for n in dict.fromkeys(names) if isinstance(n, str) and n
             and tok.token_to_id(n) is None]
  if missing:
    tok.add_special_tokens([tokenizers.AddedToken(n, special=True) for n in missing])


def _byte_level(tok: tokenizers.Tokenizer) -> bool:
  return any("ByteLevel" in repr(part) for part in (tok.pre_tokenizer, tok.decoder))


def _as_transformers_loads(tok: tokenizers.Tokenizer, config: dict[str, Any],
                           model_type: str | None) -> None:
  """Sets `tok`'s pipeline as transformers 5 builds it for the class AutoTokenizer picks
  (`tokenizer_class`): its `LlamaTokenizer` keeps only the vocabulary, merges and added tokens of tokenizer.json (a BPE
  with byte fallback and unknown pieces fused) and replaces the rest — no normaliser, a Metaspace pre-tokeniser that prepends "▁" to the first
  piece only (`legacy=False`; every piece with `legacy=True`), the matching decoder, and BOS
  (`add_bos_token`, default True) / EOS (`add_eos_token`) added by the post-processor."""
  kind = tokenizer_class(model_type, config.get("tokenizer_class"), _byte_level(tok))
  if kind not in TOKENIZER_CLASSES:
    raise ValueError(f"tokenizer_class {kind!r} is not supported; valid: "
                     f"{list(TOKENIZER_CLASSES)}.")
  if kind in _AS_SAVED:
    return
  if kind == _QWEN2:
    _as_qwen2_loads(tok, config)
    return
  prefix = config.get("add_prefix_space")
  prefix = True if prefix is None else bool(prefix)
  scheme = ("always" if config.get("legacy", False) else "first") if prefix else "never"
  if not isinstance(tok.model, tokenizers.models.BPE):
    raise ValueError(f"tokenizer_class {kind!r} needs a BPE tokenizer.json, got "
                     f"{type(tok.model).__name__}.")
  tok.model.fuse_unk, tok.model.byte_fallback = True, True
  tok.normalizer = None
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme,
                                               split=False)
  steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
  tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * prefix)
  _add_bos_eos(tok, config, add_bos_default=True)


def _as_qwen2_loads(tok: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
  """transformers' `Qwen2Tokenizer` keeps tokenizer.json's vocabulary, merges, added tokens and
  post-processor, and rebuilds the rest: a plain BPE (no unknown token, no byte fallback), NFC,
  its split regex then a byte-level mapping, a byte-level decoder; an explicit `add_bos_token` /
  `add_eos_token` rewrites the post-processor."""
  if not isinstance(tok.model, tokenizers.models.BPE):
    raise ValueError(f"tokenizer_class {_QWEN2!r} needs a BPE tokenizer.json, got "
                     f"{type(tok.model).__name__}.")
  model = tok.model
  model.dropout, model.unk_token, model.fuse_unk, model.byte_fallback = None, None, False, False
  model.continuing_subword_prefix, model.end_of_word_suffix = "", ""
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space") or False),
                               use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  if "add_bos_token" in config or "add_eos_token" in config:
    _add_bos_eos(tok, config, add_bos_default=False)


def _add_bos_eos(tok: tokenizers.Tokenizer, config: dict[str, Any], add_bos_default: bool
                 ) -> None:
  """The post-processor transformers builds: BOS (`add_bos_token`) and EOS (`add_eos_token`)
  around each sequence, where the token exists."""
  bos, eos = (_token_text(config.get(k)) for k in ("bos_token", "eos_token"))
  add_bos = bool(config.get("add_bos_token", add_bos_default)) and bos is not None
  add_eos = bool(config.get("add_eos_token", False)) and eos is not None
  single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
  pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
  tok.post_processor = processors.TemplateProcessing(
      single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t, add in
                                                ((bos, add_bos), (eos, add_eos)) if add])


class _Generation(jinja2.ext.Extension):
  """`{% generation %}…{% endgeneration %}` (marks assistant text for training masks in
  transformers): rendered as its body."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


def _raise(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _template(source: str) -> jinja2.Template:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, \
      sort_keys=False: json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                                  separators=separators, sort_keys=sort_keys)
  env.globals["raise_exception"] = _raise
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


def _token_text(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string or {"content": …}."""
  return value.get("content") if isinstance(value, dict) else value


class Processor:
  """The checkpoint's processor: `apply_chat_template`, `__call__` (text and images → ids and
  pixels), `decode`."""

  def __init__(self, directory: str | pathlib.Path, model_type: str | None = None):
    """`model_type`: the Hugging Face model type the files belong to (it decides how transformers
    loads the tokenizer); default: the folder's config.json's `model_type`."""
    self.directory = directory = pathlib.Path(directory)
    self._path(directory / "tokenizer.json")
    try:
      self.tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file.
      raise errors.InputError(errors.message(f"{directory / 'tokenizer.json'}",
                                             f"not a tokenizers file ({e})")) from None
    tok_config = self._json("tokenizer_config.json") or {}
    if model_type is None:
      model_type = (self._json("config.json") or {}).get("model_type")
    _as_transformers_loads(self.tokenizer, tok_config, model_type)
    _add_missing_special_tokens(self.tokenizer, tok_config)
    processor = self._json("processor_config.json") or {}
    image_config = processor.get("image_processor") or self._json("preprocessor_config.json")
    self.special = {k: _token_text(tok_config.get(k)) for k in _SPECIAL}
    self.clean_up_spaces = bool(tok_config.get("clean_up_tokenization_spaces", False))
    # The tokens that end an answer: generation_config.json's (one or a list; any ends it, as in
    # transformers' generate), else the tokenizer's EOS.
    eos = (self._json("generation_config.json") or {}).get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else eos
    if not (isinstance(eos, list) and eos and all(isinstance(i, int) for i in eos)):
      token = self.special["eos_token"]
      eos = [self.tokenizer.token_to_id(token)] if token is not None else []
    self.eos_token_ids: tuple[int, ...] = tuple(i for i in eos if i is not None)
    self.chat_template = self._chat_template(tok_config)
    self.model_type = model_type or "llava"  # A folder of processor files alone: LLaVA's.
    if self.model_type not in _MODELS:
      raise ValueError(f"model_type {self.model_type!r} has no processor in mmjax; valid: "
                       f"{list(MODEL_TYPES)}.")
    self.model = _MODELS[self.model_type]
    self.image = hf_image_processors.from_config(image_config) if image_config else None
    named = tok_config.get("extra_special_tokens")
    named = named if isinstance(named, dict) else {}
    self.image_token = processor.get("image_token", named.get("context_image_token",
                                                              self.model.image_token))
    self.around = [self._token_id(named.get(key, default), directory)
                   for key, default in self.model.around or ()]
    self.image_token_id = self.tokenizer.token_to_id(self.image_token)
    if self.image is not None and self.image_token_id is None:
      raise ValueError(f"The image token {self.image_token!r} is not in {directory}'s "
                       "tokenizer.json.")
    self.fields = processor  # The processor's own settings (processor_config.json).
    self.patch_size = processor.get("patch_size")
    self.extra_tokens = int(processor.get("num_additional_image_tokens", 0))
    self.strategy = processor.get("vision_feature_select_strategy", "default")
    if self.strategy not in SELECT_STRATEGIES:
      raise ValueError(f"processor vision_feature_select_strategy={self.strategy!r} is not "
                       f"supported; valid: {list(SELECT_STRATEGIES)}.")
    if (self.image is not None and self.model.count in (_llava_count, _llava_next_count)
        and not self.patch_size):
      raise ValueError(f"{directory / 'processor_config.json'} gives no patch_size: the image "
                       "token count is unknown.")

  def _token_id(self, token: str, directory: pathlib.Path) -> int:
    token_id = self.tokenizer.token_to_id(_token_text(token))
    if token_id is None:
      raise ValueError(f"The special token {token!r} is not in {directory}'s tokenizer.json.")
    return token_id

  def _path(self, path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
      raise errors.InputError(errors.message(
          f"{path}", "missing", "give the checkpoint's folder with its processor files "
          f"({', '.join(FILES[:2])}, …)"))
    return files.regular_file(path, "processor file")

  def _json(self, name: str) -> dict[str, Any] | None:
    path = self.directory / name
    if not path.exists():
      return None
    value = files.read_json(path, "processor file", MAX_FILE_BYTES)
    if not isinstance(value, dict):
      raise errors.InputError(errors.message(f"{path}", "not a JSON object"))
    return value

  def _chat_template(self, tok_config: dict[str, Any]) -> str | None:
    jinja = self.directory / "chat_template.jinja"
    if jinja.exists():
      return files.regular_file(jinja, "chat template").read_text()
    as_json = self._json("chat_template.json")
    if as_json and isinstance(as_json.get("chat_template"), str):
      return as_json["chat_template"]
    template = tok_config.get("chat_template")
    return template if isinstance(template, str) else None

  def apply_chat_template(self, messages: Sequence[dict[str, Any]],
                          add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages` ([{"role", "content": str or [{"type": "image"},
    {"type": "text", "text": …}]}]), as transformers' `apply_chat_template(tokenize=False)`."""
    if self.chat_template is None:
      raise ValueError(f"{self.directory} has no chat template (chat_template.jinja, "
                       "chat_template.json or tokenizer_config.json's chat_template): pass the "
                       "prompt as it is (--raw).")
    return _template(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **{k: v for k, v in self.special.items() if v is not None})

  def __call__(self, text: str, images: Sequence[np.ndarray] = ()) -> dict[str, np.ndarray]:
    """`text` with one image marker per image → `input_ids` int32 [L] (the markers expanded into
    image tokens), with images the image processor's outputs (`pixel_values` float32
    [N, h, w, 3] for LLaVA; the patches [Σn, K] and `image_grid_thw` [N, 3] for Qwen2-VL), and for
    an M-RoPE model `position_ids` int32 [3, L]."""
    ids = np.asarray(self.tokenizer.encode(text).ids, np.int32)
    markers = int(np.sum(ids == self.image_token_id)) if self.image_token_id is not None else 0
    if markers != len(images):
      raise ValueError(f"The prompt holds {markers} image markers {self.image_token!r} for "
                       f"{len(images)} images; place one marker per image.")
    outputs: dict[str, np.ndarray] = {}
    if images:
      if self.image is None:
        raise ValueError(f"{self.directory} has no image processor config.")
      outputs = self.image.preprocess([np.asarray(image) for image in images])
      counts = iter(self.model.count(self, outputs))
      before, after = (self.around[:1], self.around[1:]) if self.around else ([], [])
      ids = np.concatenate([np.concatenate([before, np.full(next(counts), t), after])
                            if t == self.image_token_id else [t] for t in ids]).astype(np.int32)
    if self.model.mrope:
      grids = [tuple(int(x) for x in g) for g in outputs.get("image_grid_thw", [])]
      types = (ids == self.image_token_id).astype(np.int32) if images else np.zeros_like(ids)
      outputs["position_ids"], _ = mrope.mrope_positions(types.tolist(), grids,
                                                         self.image.merge_size if images else 2)
    return {"input_ids": ids, **outputs}

  def decode(self, ids: Sequence[int]) -> str:
    """transformers' `decode(ids, skip_special_tokens=True)`."""
    text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
    if self.clean_up_spaces:
      for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                            (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                            (" 're", "'re")):
        text = text.replace(before, after)
    return text
