"""The connector interface and its registry by name.

A connector maps the tower's features [B, N, C] to the decoder's width, [B, M, D]: LLaVA's MLP
projector (M = N), and, by the same interface, modules with their own token count (a pooled grid,
learned queries cross-attending to the features: Q-Former, resampler). A connector that also
reads the text (InstructBLIP's instruction-aware Q-Former) says so with `READS_TEXT` and gets the
prompt's token embeddings. Each connector file registers its config, module and config-block
builder (`register`); every module of this package is imported by its `__init__`, so a new
connector is its file, its config and its tests (docs/towers.md).
"""
import dataclasses
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

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


@dataclasses.dataclass(frozen=True)
class Entry:
  config: type  # The connector's config dataclass.
  # The Linen module (or a factory of it), built as module(config, out_dim, dtype=…,
  # param_dtype=…, name=…).
  module: Callable[..., nn.Module]
  # (c.model.connector block) → config.
  from_config: Callable[[ml_collections.ConfigDict], ConnectorConfig]


REGISTRY: dict[str, Entry] = {}


def register(name: str, config: type, module: Callable[..., nn.Module],
             from_config: Callable[[ml_collections.ConfigDict], ConnectorConfig]) -> None:
  registry.admit(REGISTRY, "connector", name, config, "ConnectorConfig",
                 ("READS_TEXT", "num_tokens"))
  REGISTRY[name] = Entry(config, module, from_config)


def from_config(block: ml_collections.ConfigDict) -> ConnectorConfig:
  """The connector config `block` (`c.model.connector`) describes; `block.name` picks it."""
  if block.name not in REGISTRY:
    raise ValueError(f"Unknown connector {block.name!r}; valid: {sorted(REGISTRY)}.")
  return REGISTRY[block.name].from_config(block)


def module_for(config: ConnectorConfig, out_dim: int, name: str = "projector",
               **kw: Any) -> nn.Module:
  for item in REGISTRY.values():
    if type(config) is item.config:
      return item.module(config, out_dim, name=name, **kw)
  raise ValueError(f"No connector takes a {type(config).__name__}; connectors: "
                   f"{sorted(REGISTRY)}.")
