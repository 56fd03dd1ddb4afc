"""A 2×2 (or w×w) average pool of the tower's token grid, then LLaVA's MLP projector: a quarter
of the visual tokens for the decoder (the `avg_pool` connector; configs/llava15_pool.py).

The tower's tokens must form a square grid, row-major (one-view towers such as LLaVA-1.5's ViT);
pooling averages each window's features before projecting, as the pooled connectors of the
token-reduction literature do. A side the window does not divide gets partial windows at its
end, averaged over the tokens they hold (torch's `avg_pool2d(ceil_mode=True)`).
"""
import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.models import layers
from mmjax.models.connectors import base
from mmjax.models.connectors.projector import Projector, validate_projector
from mmjax.shapes import Array, Float


@dataclasses.dataclass(frozen=True)
class AvgPoolConfig:
  window: int = 2  # Tokens per side of each pooled window.
  kind: str = "mlp2x_gelu"  # The projector after the pool (`projector.validate_projector`).

  READS_TEXT = False

  def __post_init__(self):
    if self.window < 1:
      raise ValueError(f"avg_pool window={self.window} must be at least 1.")
    validate_projector(self.kind)

  def grid(self, tower_tokens: int) -> int:
    """The side of the tower's token grid; a ValueError when there is none to pool."""
    side = math.isqrt(tower_tokens)
    if side * side != tower_tokens or not side:
      raise ValueError(f"The avg_pool connector needs a square grid of tokens; the tower gives "
                       f"{tower_tokens}.")
    return side

  def num_tokens(self, tower_tokens: int) -> int:
    return (-(-self.grid(tower_tokens) // self.window)) ** 2


class AvgPool(nn.Module):
  config: AvgPoolConfig
  out_dim: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Float[Array, "B N C"]) -> Float[Array, "B M D"]:
    """N = g² tokens, row-major → M = (g / window)² projected tokens."""
    cfg = self.config
    b, n, c = x.shape
    g, w = cfg.grid(n), cfg.window
    k = -(-g // w)  # Windows per side.
    pad = ((0, 0), (0, k * w - g), (0, k * w - g), (0, 0))
    summed = jnp.pad(x.reshape(b, g, g, c), pad).reshape(b, k, w, k, w, c).sum(axis=(2, 4))
    counts = np.pad(np.ones((g, g), np.float32), pad[1:3]).reshape(k, w, k, w).sum(axis=(1, 3))
    x = (summed / counts[None, :, :, None].astype(x.dtype)).reshape(b, k * k, c)
    x = layers.constrain(x, ("batch", "length", "vision_embed"))
    return Projector(cfg.kind, self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="mlp")(x)


def from_config(block) -> AvgPoolConfig:
  """`c.model.connector`: `window`, `kind`."""
  return AvgPoolConfig(window=block.window, kind=block.kind)


base.register("avg_pool", AvgPoolConfig, AvgPool, from_config)
