"""The vision-tower interface and its registry by name.

A tower is a config (a frozen dataclass satisfying `TowerConfig`) and a Linen module taking it.
The config answers everything the rest of mmjax asks about a tower, so no code outside the
tower's own file names it: which batch keys it reads (`INPUTS`), its feature width, the most
visual tokens an image gets (the static budget the data pipeline reserves), how many a given
row's views got, and the resolution policy that turns an image into those views. Each tower file
registers itself (`register`) with a builder that reads its block of the ml-collections config
(`c.model.tower`, named by `c.model.tower.name`); `docs/towers.md` shows how to add one.
"""
import dataclasses
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import flax.linen as nn
import ml_collections
import numpy as np

from mmjax import registry
from mmjax.data import pipeline


@runtime_checkable
class TowerConfig(Protocol):
  """What a tower declares (shapes use B batch, N tokens, C width)."""

  # The batch keys the module reads, in the order of its `__call__` arguments.
  INPUTS: ClassVar[tuple[str, ...]]

  @property
  def width(self) -> int:
    """C: the width of the features the module returns, [B, N, C]."""

  @property
  def max_tokens(self) -> int:
    """N: the visual tokens of the largest image (the placeholders a row reserves)."""

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    """int [B]: the visual tokens each row's views give (≤ max_tokens; padding after them)."""

  def policy(self, aspect: str) -> Any:
    """The resolution policy (`mmjax.data.pipeline`) making this tower's views of an image;
    `aspect` is the config's `data.aspect` for towers of one square view."""


@dataclasses.dataclass(frozen=True)
class Entry:
  config: type  # The tower's config dataclass.
  module: type[nn.Module]  # The Linen module taking it as `config`.
  # (c.model.tower block, shared dtype / scan / remat settings, the LLM's width) → config.
  from_config: Callable[[ml_collections.ConfigDict, dict[str, Any], int], TowerConfig]


REGISTRY: dict[str, Entry] = {}


def register(name: str, config: type, module: type[nn.Module],
             from_config: Callable[..., TowerConfig]) -> None:
  registry.admit(REGISTRY, "tower", name, config, "TowerConfig",
                 ("INPUTS", "width", "max_tokens", "visual_tokens", "policy"))
  REGISTRY[name] = Entry(config, module, from_config)


def entry(name: str) -> Entry:
  if name not in REGISTRY:
    raise ValueError(f"Unknown tower {name!r}; valid: {sorted(REGISTRY)}.")
  return REGISTRY[name]


def from_config(block: ml_collections.ConfigDict, common: dict[str, Any],
                llm_width: int) -> TowerConfig:
  """The tower config `block` describes (`block.name` picks the tower)."""
  return entry(block.name).from_config(block, common, llm_width)


def module_for(config: TowerConfig, name: str = "tower") -> nn.Module:
  for item in REGISTRY.values():
    if type(config) is item.config:
      return item.module(config, name=name)
  raise ValueError(f"No tower takes a {type(config).__name__}; towers: {sorted(REGISTRY)}.")


def name_of(config: TowerConfig) -> str:
  for name, item in REGISTRY.items():
    if type(config) is item.config:
      return name
  raise ValueError(f"No tower takes a {type(config).__name__}; towers: {sorted(REGISTRY)}.")


class OneSquareView:
  """The interface for towers that read one square `images` view of `image_size` px (LLaVA's
  fixed resolution) and give `num_tokens(height, width)` tokens for it."""

  INPUTS = ("images",)

  @property
  def max_tokens(self) -> int:
    return self.num_tokens(self.image_size, self.image_size)

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    images = views["images"]
    return np.full(images.shape[0], self.num_tokens(*images.shape[1:3]), np.int32)

  def policy(self, aspect: str) -> pipeline.FixedResolution:
    return pipeline.FixedResolution((self.image_size,), aspect=aspect)
