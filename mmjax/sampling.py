"""Batched generation: one prefill of left-padded prompts, then cached decoding inside `jax.jit`.

`generate` is the host-side entry point (list of prompts in, numpy tokens out). It pads the
prompts with `pad_prompts` and calls `decode`, the jitted core that eval code can call directly
on a prepared batch: a prefill pass of the model into a preallocated KV cache, then a
`jax.lax.while_loop` that feeds back one token per step and stops once every row has emitted
EOS. Every step attends over the whole fixed-size cache (the validity mask hides unwritten and
padding slots), so shapes never grow and the cost per token is flat in the generated length.

Both an `MLLM` (prompts with image placeholder runs, plus images) and a text-only decoder go
through the same code; `decode` picks the forward pass from the type of its static config.
"""
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from mmjax.models import decoders
from mmjax.models import mllm as mllm_lib
from mmjax.shapes import Array, Float, Int, PRNGKeyArray

ModelConfig = mllm_lib.MLLMConfig | decoders.DecoderConfig


def _check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
  if not (temperature >= 0 and math.isfinite(temperature)):
    raise ValueError(f"temperature={temperature} must be finite and >= 0 (0: greedy).")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"top_k={top_k!r} must be an integer >= 0 (0: off).")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p} must lie in (0, 1] (1: off).")


def sample_logits(logits: Float[Array, "B V"], rng: PRNGKeyArray | None, *, temperature: float,
                  top_k: int = 0, top_p: float = 1.0) -> Int[Array, "B"]:
  """Draws one token per row.

  temperature 0 is greedy (argmax; `rng` unused and may be None). Otherwise the token is drawn
  from softmax(logits / temperature) restricted first to the `top_k` largest logits (0: off),
  then to the nucleus: the smallest set of most likely tokens whose probability mass, after the
  top-k cut, is >= `top_p` (1: off); the most likely token is always kept. Tokens tied with the
  last one kept are kept too.

  Args:
    logits: [B, V] next-token logits (any float dtype; sampled in float32).
    rng: a PRNG key, the only source of randomness; required when temperature > 0.
    temperature: >= 0.
    top_k: >= 0; values >= V mean no cut.
    top_p: in (0, 1].

  Returns:
    [B] int32 token ids.
  """
  _check_sampling_args(temperature, top_k, top_p)
  logits = logits.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if rng is None:
    raise ValueError(f"temperature={temperature} > 0 samples, so it needs an rng key.")
  logits = logits / temperature
  vocab = logits.shape[-1]
  top_k = top_k if 0 < top_k < vocab else 0
  if top_k or top_p < 1:
    # Largest first; with top-k only the k largest are needed, and the nucleus lies inside them.
    ranked = jax.lax.top_k(logits, top_k)[0] if top_k else -jnp.sort(-logits, axis=-1)
    keep = jnp.full(logits.shape[:1], ranked.shape[-1])
    if top_p < 1:
      probs = jax.nn.softmax(ranked, axis=-1)
      # Rank i is in the nucleus while the mass of the ranks before it is still below top_p.
      mass_before = jnp.cumsum(probs, axis=-1) - probs
      keep = jnp.sum(mass_before < top_p, axis=-1)
    cutoff = jnp.take_along_axis(ranked, keep[:, None] - 1, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def pad_prompts(prompts: Sequence[np.ndarray], *, bucket: int = 1,
                positions: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """Left-pads prompts into one prefill batch.

  The length is the longest prompt rounded up to a multiple of `bucket`, so calls whose longest
  prompts differ slightly share one compiled shape. Left padding puts every row's last prompt
  token in the last column, where decoding continues.

  Args:
    prompts: B non-empty 1-D integer arrays (image placeholders included).
    bucket: >= 1.
    positions: optional per-prompt M-RoPE positions, each int [len(prompt), 3].

  Returns:
    int32 [B, L] arrays: `tokens` (0 on padding: any in-vocabulary id, the slots are masked),
    `positions` (0, 1, … on each row's tokens, 0 on padding; [B, L, 3] with given M-RoPE
    positions) and `segment_ids` (1 on tokens, 0 on padding).
  """
  if bucket < 1:
    raise ValueError(f"bucket={bucket} must be >= 1.")
  if not prompts:
    raise ValueError("prompts is empty; need at least one prompt.")
  prompts = [np.asarray(p) for p in prompts]
  for i, p in enumerate(prompts):
    if p.ndim != 1 or not p.size or not np.issubdtype(p.dtype, np.integer):
      raise ValueError(f"prompts[{i}] must be a non-empty 1-D integer array, got {p.dtype} "
                       f"{p.shape}.")
  length = -(-max(len(p) for p in prompts) // bucket) * bucket
  tokens = np.zeros((len(prompts), length), np.int32)
  segment_ids = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, length - len(p):], segment_ids[i, length - len(p):] = p, 1
  if positions is None:
    out = np.maximum(np.cumsum(segment_ids, axis=1) - 1, 0).astype(np.int32)
  else:
    if len(positions) != len(prompts):
      raise ValueError(f"{len(positions)} position arrays for {len(prompts)} prompts.")
    out = np.zeros((len(prompts), length, 3), np.int32)
    for i, (p, pos) in enumerate(zip(prompts, positions)):
      if np.shape(pos) != (len(p), 3):
        raise ValueError(f"positions[{i}] has shape {np.shape(pos)}; prompt {i} needs "
                         f"({len(p)}, 3).")
      out[i, length - len(p):] = pos
  return {"tokens": tokens, "positions": out, "segment_ids": segment_ids}


class Generation(NamedTuple):
  """What `decode` returns.

  tokens: int32 [B, max_new_tokens], each row's tokens up to and including its first EOS, then
    `pad_id`.
  lengths: int32 [B], generated tokens per row counting the EOS (max_new_tokens if none came),
    so `tokens[b, lengths[b]:]` is all padding.
  steps: int32 [], tokens the loop produced per row (= max(lengths)); < max_new_tokens when
    every row stopped early.
  """
  tokens: Int[Array, "B N"]
  lengths: Int[Array, "B"]
  steps: Int[Array, ""]


def _llm_config(config: ModelConfig) -> decoders.DecoderConfig:
  return config.llm if isinstance(config, mllm_lib.MLLMConfig) else config


def _forward(config: ModelConfig, variables, batch: dict[str, Array], cache: Any
             ) -> tuple[Float[Array, "B L V"], Any]:
  if isinstance(config, mllm_lib.MLLMConfig):
    return mllm_lib.MLLM(config).apply(variables, batch, cache)
  text_only = lambda m: m(m.embed(batch["tokens"]), batch["positions"], batch["segment_ids"],
                          cache)
  logits, _, cache = nn.apply(text_only, decoders.module_for(config))(variables)
  return logits, cache


def decode(config: ModelConfig, variables, batch: dict[str, Array], rng: PRNGKeyArray | None,
           *, max_new_tokens: int, eos_id: int | Sequence[int] | None, pad_id: int,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           on_tokens: Callable[[np.ndarray, np.ndarray], None] | None = None) -> Generation:
  """Prefills a fresh KV cache with `batch` and decodes up to `max_new_tokens` per row.

  Runs one jitted function (also callable under an outer `jax.jit`) whose static arguments are
  all but `variables`, `batch` and `rng`: one compilation serves every call with the same shapes
  and settings, whether it comes through `generate` or not.

  Args:
    config: an `MLLMConfig` (runs `MLLM`) or a `DecoderConfig` (runs that decoder on text alone).
    variables: the model's variables.
    batch: left-padded prompts as from `pad_prompts` (`tokens`, `positions`, `segment_ids`, each
      [B, L]; every row's last column a real token) plus, for an MLLM, optionally `images`
      [B, H, W, 3] (rows without placeholders ignore theirs).
    rng: a PRNG key, split per step; ignored (may be None) for greedy decoding.
    max_new_tokens: >= 1.
    eos_id: the token that ends a row, in [0, vocab_size), or several (any ends it, as
      transformers' list of `eos_token_id`); None: rows never stop early.
    pad_id: written after a row's EOS (never fed to the model).
    temperature, top_k, top_p: as in `sample_logits`.
    on_tokens: called on the host as each step's tokens are drawn, in order, with the step (int32
      []) and the tokens (int32 [B], `pad_id` on finished rows): streams the output while the
      loop runs on the device. Part of the compiled program (one compilation per function).

  Returns:
    A `Generation`.
  """
  vocab = _llm_config(config).vocab_size
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
  eos = () if eos_id is None else tuple(
      int(i) for i in (eos_id if isinstance(eos_id, Sequence) else (eos_id,)))
  if any(not 0 <= i < vocab for i in eos):
    raise ValueError(f"eos_id={eos_id} must lie in [0, {vocab}) or be None.")
  _check_sampling_args(temperature, top_k, top_p)
  if temperature > 0 and rng is None:
    raise ValueError(f"temperature={temperature} > 0 samples, so it needs an rng key.")
  # Positional and normalised, so that equal settings always hit the same jit cache entry
  # (keywords passed explicitly or left to their defaults would not, nor would a greedy call
  # with a key and one without).
  rng = None if temperature == 0 else rng
  return _decode(config, variables, batch, rng, int(max_new_tokens),
                 eos, int(pad_id), float(temperature),
                 int(top_k), float(top_p), on_tokens)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 9, 10))
def _decode(config: ModelConfig, variables, batch: dict[str, Array], rng: PRNGKeyArray | None,
            max_new_tokens: int, eos: tuple[int, ...], pad_id: int, temperature: float,
            top_k: int, top_p: float, on_tokens: Callable | None = None) -> Generation:
  def emit(step, tokens):
    if on_tokens is not None:
      io_callback(on_tokens, None, step, tokens, ordered=True)

  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  step_key = lambda step: None if rng is None else jax.random.fold_in(rng, step)
  is_eos = lambda token: jnp.isin(token, jnp.asarray(eos, token.dtype)) if eos else \
      jnp.zeros(token.shape, jnp.bool_)
  rows, length = batch["tokens"].shape
  # The last sampled token is never fed back, hence one slot fewer than L + max_new_tokens.
  cache = _llm_config(config).init_cache(rows, length + max_new_tokens - 1)
  logits, cache = _forward(config, variables, batch, cache)
  first = sample(logits[:, -1], step_key(0))
  last_position = batch["positions"][:, -1]
  init = {
      "step": jnp.ones((), jnp.int32), "token": first, "done": is_eos(first),
      "lengths": jnp.ones((rows,), jnp.int32), "cache": cache,
      "tokens": jnp.full((rows, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first),
  }
  emit(jnp.zeros((), jnp.int32), first)

  def running(state):
    return (state["step"] < max_new_tokens) & ~jnp.all(state["done"])

  def step(state):
    n = state["step"]
    # Finished rows still run (the batch is static) on their own last sample; their output is
    # replaced by pad_id, which need not be a vocabulary id.
    feed = {"tokens": state["token"][:, None], "positions": (last_position + n)[:, None],
            "segment_ids": jnp.ones((rows, 1), jnp.int32)}
    logits, cache = _forward(config, variables, feed, state["cache"])
    token = sample(logits[:, -1], step_key(n))
    done = state["done"]
    emit(n, jnp.where(done, pad_id, token))
    return {
        "step": n + 1, "token": token, "done": done | is_eos(token),
        "lengths": state["lengths"] + (~done).astype(jnp.int32), "cache": cache,
        "tokens": state["tokens"].at[:, n].set(jnp.where(done, pad_id, token)),
    }

  final = jax.lax.while_loop(running, step, init)
  return Generation(final["tokens"], final["lengths"], final["step"])


def _check_prompts(config: ModelConfig, prompts: Sequence[np.ndarray],
                   views: dict[str, np.ndarray] | None) -> None:
  """Raises ValueError unless every id is a vocabulary id or an image placeholder, and every
  prompt with placeholders has an image and exactly as many placeholders as its visual tokens."""
  vocab = _llm_config(config).vocab_size
  image_id = config.image_token_id if isinstance(config, mllm_lib.MLLMConfig) else None
  if views is not None:
    if image_id is None:
      raise ValueError("images were given to a text-only decoder; pass images=None.")
    wanted = config.view_keys
    if not set(wanted) <= set(views):
      raise ValueError(f"This tower reads {list(wanted)}; got views {sorted(views)}.")
    for key, value in views.items():
      if value.shape[0] != len(prompts):
        raise ValueError(f"{key} has {value.shape[0]} rows for {len(prompts)} prompts.")
    rank = 4 + (config.max_images > 1)
    if "images" in views and (views["images"].ndim != rank or views["images"].shape[-1] != 3):
      raise ValueError(f"images must be [B={len(prompts)}, "
                       f"{'N, ' if rank == 5 else ''}H, W, 3], got {views['images'].shape}.")
    visual = config.visual_tokens(views)
  for i, prompt in enumerate(prompts):
    prompt = np.asarray(prompt)
    placeholders = int(np.sum(prompt == image_id)) if image_id is not None else 0
    text = prompt[prompt != image_id] if image_id is not None else prompt
    if np.any((text < 0) | (text >= vocab)):
      raise ValueError(f"prompts[{i}] holds ids outside the vocabulary [0, {vocab}) "
                       "that are not image placeholders.")
    if not placeholders:
      continue
    if views is None:
      raise ValueError(f"prompts[{i}] holds {placeholders} image placeholders but images is "
                       "None.")
    expected = int(visual[i])
    if placeholders != expected:
      raise ValueError(f"prompts[{i}] holds {placeholders} image placeholders; its image gives "
                       f"{expected} visual tokens.")


def generate(model: nn.Module, variables, prompts: Sequence[np.ndarray],
             images: np.ndarray | dict[str, np.ndarray] | None = None, *, max_new_tokens: int,
             eos_id: int | Sequence[int] | None, pad_id: int, temperature: float = 0.0,
             top_k: int = 0,
             top_p: float = 1.0, rng: PRNGKeyArray | None = None, bucket: int = 64,
             positions: Sequence[np.ndarray] | None = None,
             on_tokens: Callable[[np.ndarray, np.ndarray], None] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """Generates continuations of a batch of prompts of different lengths.

  Args:
    model: an `MLLM` or a text-only decoder (`mmjax.models.decoders`; only its config is used).
    variables: its variables.
    prompts: B 1-D token id arrays; an MLLM prompt holds runs of `config.image_token_id`, one
      placeholder per visual token of its images, in order.
    images: [B, H, W, 3] normalised pixels (row b's used only if prompt b has placeholders), or
      a dynamic-resolution policy's views by name (`mmjax.data.pipeline`: a native tower's
      patches, InternVL's tiles and tile mask, OneVision's / XComposer's crops and plan), or None
      when no prompt has placeholders. With `config.max_images` N > 1: [B, N, …] views and
      `image_tokens` [B, N] (`MLLM`).
    max_new_tokens, eos_id, pad_id, temperature, top_k, top_p: as in `decode`.
    rng: a PRNG key; needed when temperature > 0.
    bucket: the prompt length is rounded up to a multiple of it (`pad_prompts`), so calls with
      similar prompt lengths reuse one compilation.
    positions: per-prompt M-RoPE positions [len, 3] for an M-RoPE model (`pad_prompts`).
    on_tokens: streams each step's tokens to the host (`decode`).

  Returns:
    tokens: int32 [B, max_new_tokens] (after EOS: `pad_id`); lengths: int32 [B] (see
    `Generation`).
  """
  if not isinstance(getattr(model, "config", None), (mllm_lib.MLLMConfig, decoders.DecoderConfig)):
    raise ValueError(f"model must be an MLLM or a decoder, got {type(model).__name__}.")
  batch = pad_prompts(prompts, bucket=bucket, positions=positions)
  views = images
  if images is not None and not isinstance(images, dict):
    views = {"images": np.asarray(images, np.float32)}
  _check_prompts(model.config, prompts, views)
  mrope = _llm_config(model.config).position_axes == 3
  if mrope != (positions is not None):
    raise ValueError("An M-RoPE model needs the prompts' positions, and only it takes them.")
  if views is not None:
    batch.update({k: np.asarray(views[k]) for k in model.config.view_keys})
  out = decode(model.config, variables, batch, rng, max_new_tokens=max_new_tokens,
               eos_id=eos_id, pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
               on_tokens=on_tokens)
  return np.asarray(out.tokens), np.asarray(out.lengths)
