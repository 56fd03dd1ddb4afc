"""The decoder interface and its registry by name.

A decoder is the language model the visual tokens are written into: LLaMA / Qwen2 today
(`llama.py`). Its config (a frozen dataclass satisfying `DecoderConfig`) answers what the rest of
mmjax asks about it, and its Linen module has three entry points (shapes in `mmjax.shapes`):

  embed(tokens: Int[B L]) -> Float[B L D]            token embeddings (the vocabulary may be
                                                     extended, e.g. with discrete image tokens)
  __call__(x: Float[B L D], positions: Int[B L] | Int[3 B L], segment_ids: Int[B L],
           cache=None, **reads) -> (logits Float[B L V], hidden Float[B L D], cache)
  logits(x: Float[B L D]) -> Float[B L V]

`x` holds the text embeddings with the visual tokens already written in (by the MLLM: from a
tower and connector, or from a patch embedding when a model has no vision encoder, as Fuyu). A
decoder that needs more than the sequence says so in its config, and the MLLM passes it by
keyword (`**reads`):

  READS_VISUAL_MASK  `visual`: Bool[B L], the positions holding visual tokens, for per-token
                     weights (CogVLM's visual expert, XComposer2's Partial LoRA);
  READS_MEMORY       `memory`: Float[B S C], features every layer cross-attends to (CogAgent's
                     high-resolution stream); the decoder's own `init_cache` holds what decoding
                     caches of it.

The cache is the decoder's own pytree, made by its config's `init_cache`: the sampler never looks
inside it. Each decoder file registers its config, module and config-block builder (`register`);
every module of this package is imported by its `__init__`, so a new decoder is its file, its
config and its tests (docs/towers.md, "Adding a part").
"""
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import flax.linen as nn
import ml_collections

from mmjax import registry


@runtime_checkable
class DecoderConfig(Protocol):
  """What a decoder declares."""

  READS_VISUAL_MASK: ClassVar[bool]  # __call__ takes `visual`, Bool[B L].
  READS_MEMORY: ClassVar[bool]  # __call__ takes `memory`, Float[B S C].
  vocab_size: int  # V, special and image tokens included.
  width: int  # D, the width of the embeddings `__call__` takes.

  @property
  def position_axes(self) -> int:
    """1: positions are Int[B L]; 3: M-RoPE's (temporal, height, width), Int[3 B L]."""

  def init_cache(self, batch: int, length: int, dtype: str | None = None) -> Any:
    """An empty decoding cache of `length` slots for `batch` rows."""


# {name: registry.Entry}; an entry's `module` is the Linen module taking the config as `config`,
# its `from_config` maps (c.model.llm block, shared dtype / scan / remat / attention settings,
# the tokenizer's vocabulary size) to the config.
REGISTRY = registry.Parts("decoder", "DecoderConfig",
                         ("READS_VISUAL_MASK", "READS_MEMORY", "vocab_size", "width",
                          "position_axes", "init_cache"))


def register(name: str, config: type, module: type[nn.Module],
             from_config: Callable[..., DecoderConfig]) -> None:
  REGISTRY.register(name, config, module, from_config)


def from_config(block: ml_collections.ConfigDict, common: dict[str, Any],
                vocab_size: int) -> DecoderConfig:
  """The decoder config `block` (`c.model.llm`) describes; `block.name` picks the decoder."""
  return REGISTRY.entry(block.name).from_config(block, common, vocab_size)


def module_for(config: DecoderConfig, name: str | None = None) -> nn.Module:
  return REGISTRY.of(config)[1].module(config, name=name)
