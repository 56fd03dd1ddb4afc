"""The vision-tower interface and its registry by name.

A tower is a config (a frozen dataclass satisfying `TowerConfig`) and a Linen module taking it.
The config answers everything the rest of mmjax asks about a tower, so no code outside the
tower's own file names it: which batch keys it reads (`INPUTS`), its feature width, the most
visual tokens an image gets (the static budget the data pipeline reserves), how many a given
row's views got, and the resolution policy that turns an image into those views. Each tower file
registers itself (`register`) with a builder that reads its block of the ml-collections config
(`c.model.tower`, named by `c.model.tower.name`); `docs/towers.md` shows how to add one.
"""
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, runtime_checkable

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


# {name: registry.Entry}; an entry's `module` is the Linen module taking the config as `config`,
# its `from_config` maps (c.model.tower block, shared dtype / scan / remat settings, the LLM's
# width) to the config.
REGISTRY = registry.Parts("tower", "TowerConfig",
                         ("INPUTS", "width", "max_tokens", "visual_tokens", "policy"))


def register(name: str, config: type, module: type[nn.Module],
             from_config: Callable[..., TowerConfig]) -> None:
  REGISTRY.register(name, config, module, from_config)


def entry(name: str) -> registry.Entry:
  return REGISTRY.entry(name)


def from_config(block: ml_collections.ConfigDict, common: dict[str, Any],
                llm_width: int) -> TowerConfig:
  """The tower config `block` describes (`block.name` picks the tower)."""
  return entry(block.name).from_config(block, common, llm_width)


def module_for(config: TowerConfig, name: str = "tower") -> nn.Module:
  return REGISTRY.of(config)[1].module(config, name=name)


def name_of(config: TowerConfig) -> str:
  return REGISTRY.of(config)[0]


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
