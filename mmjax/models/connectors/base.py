"""The connector interface and its registry by name.

A connector maps the tower's features [B, N, C] to the decoder's width, [B, M, D]: LLaVA's MLP
projector (M = N), and, by the same interface, modules with their own token count (a pooled grid,
learned queries cross-attending to the features: Q-Former, resampler). A connector that also
reads the text (InstructBLIP's instruction-aware Q-Former) says so with `READS_TEXT` and gets the
prompt's token embeddings. Each connector file registers its config, module and config-block
builder (`register`); every module of this package is imported by its `__init__`, so a new
connector is its file, its config and its tests (docs/towers.md).
"""
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

import flax.linen as nn
import ml_collections

from mmjax import registry


@runtime_checkable
class ConnectorConfig(Protocol):
  """What a connector declares."""

  # True: `__call__(features, text, text_mask)` also takes the prompt's token embeddings
  # [B, L, D] and their mask [B, L]; False: `__call__(features)`.
  READS_TEXT: ClassVar[bool]

  def num_tokens(self, tower_tokens: int) -> int:
    """M: the visual tokens the decoder gets for `tower_tokens` (N) tower features; a
    ValueError names the connector and why when it cannot take N."""


# {name: registry.Entry}; an entry's `module` is the Linen module (or a factory of it), built as
# module(config, out_dim, dtype=…, param_dtype=…, name=…), its `from_config` maps the
# c.model.connector block to the config.
REGISTRY = registry.Parts("connector", "ConnectorConfig", ("READS_TEXT", "num_tokens"))


def register(name: str, config: type, module: Callable[..., nn.Module],
             from_config: Callable[[ml_collections.ConfigDict], ConnectorConfig]) -> None:
  REGISTRY.register(name, config, module, from_config)


def from_config(block: ml_collections.ConfigDict) -> ConnectorConfig:
  """The connector config `block` (`c.model.connector`) describes; `block.name` picks it."""
  return REGISTRY.entry(block.name).from_config(block)


def module_for(config: ConnectorConfig, out_dim: int, name: str = "projector",
               **kw: Any) -> nn.Module:
  return REGISTRY.of(config)[1].module(config, out_dim, name=name, **kw)
