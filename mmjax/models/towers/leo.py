"""LEO's tower (METHODS §2.4): each encoder's map is pixel-unshuffled to one token grid and passed
through its own projector (LayerNorm → Linear → GELU → Linear, "post-adaptation"); the encoders'
tokens are then interleaved one by one (encoder 0, encoder 1, encoder 0, …), as the authors'
code does. The tokens leave in the LLM's width, so the model's own projector is `identity`.

Exact to the authors' code (Mozhgan91/LEO @d2787c6, `leo_chat/leo/model/leo_chat/
modeling_leo_chat.py` and `leo_chat/leo/model/projector/modeling_projector.py`;
tests/test_tower_references.py) for what follows the encoders: a ViT's map (its class token
dropped, the last hidden state by default) is unshuffled in InternVL's (dy, dx, c) order, a
convolutional map — the slot of LEO's SAM, whose channels-first neck output the authors unshuffle
with torch's `pixel_unshuffle` — in (c, dy, dx) order; each has its own projector; tokens
alternate one by one. LEO's encoders are InternViT and SAM, each with its own image processor;
here they are the ViT and ConvNeXt of `EncoderSpec`, each fed the tower's input resized.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import layers
from mmjax.models import pixel_unshuffle
from mmjax.models.towers import base
from mmjax.models.towers import encoders as encoders_lib
from mmjax.shapes import Array, Float


@dataclasses.dataclass(frozen=True)
class LEOTowerConfig(base.OneSquareView):
  encoders: tuple[encoders_lib.EncoderSpec, ...] = ()  # Two in LEO (InternViT and SAM).
  image_size: int = 448  # The tower's input side (one tile).
  grid: int = 16  # Token grid per encoder after pixel unshuffle (LEO: 16 → 256 tokens each).
  out_width: int = 4096  # The LLM's width: the per-encoder projectors map to it.

  def __post_init__(self):
    if not self.encoders:
      raise ValueError("A LEO tower needs at least one encoder.")
    for i, spec in enumerate(self.encoders):
      if spec.grid % self.grid:
        raise ValueError(f"Encoder {i}'s {spec.grid}x{spec.grid} map does not pixel-unshuffle "
                         f"to the {self.grid}x{self.grid} grid (its side must be a multiple).")

  @property
  def width(self) -> int:
    return self.out_width

  def num_tokens(self, height: int, width: int) -> int:
    del height, width
    return self.grid ** 2 * len(self.encoders)


class LEOTower(nn.Module):
  config: LEOTowerConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B R R 3"]) -> Float[Array, "B N D"]:
    cfg = self.config
    b = images.shape[0]
    streams = []
    for i, spec in enumerate(cfg.encoders):
      kw = spec.dtypes
      x = encoders_lib.Encoder(spec, name=f"encoder_{i}")(images)
      x = pixel_unshuffle.pixel_unshuffle(x, spec.grid // cfg.grid,
                                          channel_major=spec.convnext is not None)
      x = x.reshape(b, cfg.grid * cfg.grid, x.shape[-1])
      x = layers.layer_norm(name=f"project_{i}_norm", axis_name="conv_in", **kw)(x)
      x = layers.dense(cfg.out_width, ("conv_in", "embed"), name=f"project_{i}_in", **kw)(x)
      x = layers.dense(cfg.out_width, ("embed", "mlp"), name=f"project_{i}_out", **kw)(
          nn.gelu(x, approximate=False))
      streams.append(x)
    # [B, N, E, D] → [B, N·E, D]: token n of encoder e lands at position n·E + e.
    out = jnp.stack(streams, axis=2).reshape(b, -1, cfg.out_width)
    return layers.constrain(out, ("batch", "length", "embed"))


def from_config(block, common: dict, llm_width: int) -> LEOTowerConfig:
  """`c.model.tower`: `encoders` with their `vit` / `convnext` blocks (encoders_lib.from_config),
  `image_size`, `grid`; the per-encoder projectors map to the LLM's width."""
  return LEOTowerConfig(encoders=encoders_lib.from_config(block, common),
                        image_size=block.image_size, grid=block.grid, out_width=llm_width)


base.register("leo", LEOTowerConfig, LEOTower, from_config)
