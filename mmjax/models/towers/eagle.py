"""EAGLE's mixture of encoders (METHODS §2.3): every encoder's map is bilinearly interpolated
(align_corners=True) to one token grid and the channels are concatenated — the fusion EAGLE
found as good as the complex ones. `fusion="sequence"` is the compared alternative: each
encoder's tokens, linearly projected to a common width, appended one encoder after another.

Channel fusion is exact to the authors' code (NVlabs/EAGLE @fef95f1, `eagle/model/
multimodal_encoder/multi_backbone_channel_concatenation_encoder.py` and `hr_clip_encoder.py`;
tests/test_tower_references.py): each encoder's input is the tower's image resized bilinearly
with align_corners=True; a ViT is their `HRCLIPVisionTower` — the class token dropped before
`pre_layrnorm` and the blocks, the position table resampled with antialiased bicubic, every block
run (the config's `select`, -1 in the authors' code); a map already on the grid is kept as it is.
Sequence fusion is not in the authors' code; it follows the paper's description.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import interpolate
from mmjax.models import layers
from mmjax.models import vit as vit_lib
from mmjax.models.towers import base
from mmjax.models.towers import encoders as encoders_lib
from mmjax.shapes import Array, Float

FUSIONS = ("channel", "sequence")


@dataclasses.dataclass(frozen=True)
class EagleTowerConfig(base.OneSquareView):
  encoders: tuple[encoders_lib.EncoderSpec, ...] = ()  # At least one; each sees the input resized.
  image_size: int = 1024  # The tower's input side.
  grid: int = 32  # Token grid side every encoder is interpolated to (EAGLE: 32 → 1024 tokens).
  fusion: str = "channel"  # "channel" (concat channels) or "sequence" (append token sequences).
  sequence_width: int = 0  # Width of each encoder's projection for "sequence" (0: the first's).

  def __post_init__(self):
    if not self.encoders:
      raise ValueError("An EAGLE tower needs at least one encoder.")
    if self.fusion not in FUSIONS:
      raise ValueError(f"Unknown fusion {self.fusion!r}; valid: {FUSIONS}.")
    if self.grid < 1:
      raise ValueError(f"grid={self.grid} must be positive.")

  @property
  def width(self) -> int:
    if self.fusion == "channel":
      return sum(e.width for e in self.encoders)
    return self.sequence_width or self.encoders[0].width

  def num_tokens(self, height: int, width: int) -> int:
    del height, width
    return self.grid ** 2 * (len(self.encoders) if self.fusion == "sequence" else 1)

  @property
  def encoder_specs(self) -> tuple[encoders_lib.EncoderSpec, ...]:
    """The encoders as the authors run them: each ViT as their HR-CLIP tower."""
    return tuple(dataclasses.replace(spec, vit=vit_lib.hr_clip(spec.vit))
                 if spec.vit is not None else spec for spec in self.encoders)


class EagleTower(nn.Module):
  config: EagleTowerConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B R R 3"]) -> Float[Array, "B N C"]:
    cfg = self.config
    b = images.shape[0]
    tokens = []
    for i, spec in enumerate(cfg.encoder_specs):
      x = encoders_lib.Encoder(spec, name=f"encoder_{i}")(images)
      x = interpolate.resize(x, (cfg.grid, cfg.grid), "bilinear", align_corners=True)
      x = x.reshape(b, cfg.grid * cfg.grid, x.shape[-1])
      if cfg.fusion == "sequence":
        x = layers.dense(cfg.width, ("conv_in", "embed"), name=f"project_{i}",
                         **spec.dtypes)(x)
      tokens.append(x)
    out = jnp.concatenate(tokens, axis=-1 if cfg.fusion == "channel" else 1)
    return layers.constrain(out, ("batch", "length", "embed"))


def from_config(block, common: dict, llm_width: int) -> EagleTowerConfig:
  """`c.model.tower`: `encoders` with their `vit` / `convnext` blocks (encoders_lib.from_config),
  `image_size`, `grid`, `fusion`."""
  del llm_width
  return EagleTowerConfig(encoders=encoders_lib.from_config(block, common),
                          image_size=block.image_size, grid=block.grid, fusion=block.fusion)


base.register("eagle", EagleTowerConfig, EagleTower, from_config)
