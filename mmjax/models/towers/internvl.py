"""InternVL 1.5's tower: dynamic aspect-ratio tiles through one ViT, pixel unshuffle per tile.

The data pipeline cuts each image into the grid `resolution.internvl_grid` picks (plus a
thumbnail when there is more than one tile) and pads the tiles to `max_tiles` (static). Every tile
goes through the same ViT; its patch grid is pixel-unshuffled by 2 (4× fewer tokens, 4× wider)
and layer-normalised (InternVL's `mlp1` starts with that LayerNorm; the model's projector is the
rest of it). Tiles are concatenated in order, so an image of n tiles gives its n · tokens_per_tile
tokens first and padding after them; the LLM reads only as many as the row has placeholders.
"""
import dataclasses

import flax.linen as nn
import numpy as np

from mmjax.data import pipeline
from mmjax.models import layers
from mmjax.models import vit as vit_lib
from mmjax.models.pixel_unshuffle import pixel_unshuffle
from mmjax.models.towers import base
from mmjax.models.vit import ViT, ViTConfig, check_select_layer
from mmjax.shapes import Array, Float


@dataclasses.dataclass(frozen=True)
class InternVLTowerConfig:
  vit: ViTConfig = ViTConfig(image_size=448, patch_size=14, use_cls=True)  # InternViT-300M-448px shape.
  select_layer: int = -1  # InternVL 1.5 feeds the last layer on.
  min_num: int = 1  # Fewest tiles of the grid.
  max_num: int = 12  # Most tiles of the grid (training: 12; inference up to 40).
  thumbnail: bool = True  # A whole-image tile after the grid when it has more than one tile.

  INPUTS = ("tiles",)

  def __post_init__(self):
    if self.vit.grid % 2:
      raise ValueError(f"InternVL tiles of {self.vit.image_size} px give a {self.vit.grid}-patch "
                       "grid; pixel unshuffle needs it even.")
    if not 1 <= self.min_num <= self.max_num:
      raise ValueError(f"Need 1 <= min_num <= max_num, got {self.min_num}, {self.max_num}.")
    check_select_layer(self.vit, self.select_layer)

  @property
  def tile(self) -> int:
    return self.vit.image_size

  @property
  def max_tiles(self) -> int:
    return self.max_num + int(self.thumbnail and self.max_num > 1)

  @property
  def tokens_per_tile(self) -> int:
    return (self.vit.grid // 2) ** 2

  @property
  def width(self) -> int:
    return 4 * self.vit.width

  @property
  def max_tokens(self) -> int:
    return self.max_tiles * self.tokens_per_tile

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    if "tile_mask" not in views:
      raise ValueError("An InternVL tower's views need `tile_mask` (which tiles are used).")
    return np.sum(views["tile_mask"], axis=1) * self.tokens_per_tile

  def policy(self, aspect: str) -> pipeline.InternVLTiles:
    del aspect  # Tiles follow the image's aspect (the closest grid).
    return pipeline.InternVLTiles(tile=self.tile, min_num=self.min_num, max_num=self.max_num,
                                  thumbnail=self.thumbnail, tokens_per_tile=self.tokens_per_tile)


class InternVLTower(nn.Module):
  config: InternVLTowerConfig

  @nn.compact
  def __call__(self, tiles: Float[Array, "B K R R 3"]) -> Float[Array, "B N C"]:
    """Padded tiles (T = max_tiles) → [B, T · tokens_per_tile, 4 · vit.width]."""
    cfg = self.config
    b, t = tiles.shape[:2]
    hidden = ViT(cfg.vit, name="vit").hidden_states(tiles.reshape(b * t, *tiles.shape[2:]))
    x = hidden[cfg.select_layer][:, cfg.vit.prefix_tokens:]
    g = cfg.vit.grid
    x = pixel_unshuffle(x.reshape(b * t, g, g, -1), 2)
    x = layers.layer_norm(name="norm", axis_name="vision_embed", dtype=cfg.vit.dtype,
                          param_dtype=cfg.vit.param_dtype)(x)
    return layers.constrain(x.reshape(b, t * cfg.tokens_per_tile, -1),
                            ("batch", "length", "vision_embed"))


def from_config(block, common: dict, llm_width: int) -> InternVLTowerConfig:
  """`c.model.tower`: `vit` (ViTConfig fields; its image_size is the tile side), `max_num`."""
  del llm_width
  return InternVLTowerConfig(vit=vit_lib.from_block(block.vit, common), max_num=block.max_num)


base.register("internvl", InternVLTowerConfig, InternVLTower, from_config)
