"""One vision encoder inside a tower: which network, at which input side, which features.

Towers that mix encoders (EAGLE, LEO) hold a tuple of `EncoderSpec`s; each encoder sees the
tower's input image bilinearly resized to its own side (align_corners=True, as EAGLE's
`MultiBackboneChannelConcatenationVisionTower` resizes it) and returns a channels-last map.
"""
import dataclasses

import flax.linen as nn

from mmjax.models import convnext as convnext_lib
from mmjax.models import interpolate
from mmjax.models import vit as vit_lib
from mmjax.shapes import Array, Float


def resize_images(images: Float[Array, "B H W 3"], side: int,
                  align_corners: bool) -> Float[Array, "B R R 3"]:
  """A square bilinear resize of normalised pixels, as the reference towers make their views
  (`F.interpolate(..., mode="bilinear")`, no antialiasing): with align_corners=True in LLaVA-HR
  and EAGLE, False in Mini-Gemini — each tower names the authors' choice."""
  return interpolate.resize(images, (side, side), "bilinear", align_corners)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """Exactly one of `vit` / `convnext`."""
  vit: vit_lib.ViTConfig | None = None
  convnext: convnext_lib.ConvNeXtConfig | None = None
  image_size: int = 448  # Side of the (square) image this encoder sees.
  select: int = -1  # ViT: hidden-state index (class token dropped); ConvNeXt: stage index.

  def __post_init__(self):
    if (self.vit is None) == (self.convnext is None):
      raise ValueError("An EncoderSpec needs exactly one of vit= or convnext=.")
    if self.vit is not None:
      vit_lib.check_select_layer(self.vit, self.select, "select")
      if self.image_size % self.vit.patch_size:
        raise ValueError(f"Encoder image_size={self.image_size} is not a multiple of the ViT "
                         f"patch_size={self.vit.patch_size}.")
    elif not -self.convnext.num_stages <= self.select < self.convnext.num_stages:
      raise ValueError(f"select={self.select} is not one of the ConvNeXt's "
                       f"{self.convnext.num_stages} stages.")

  @property
  def width(self) -> int:
    return self.vit.width if self.vit is not None else self.convnext.widths[self.select]

  @property
  def dtypes(self) -> dict[str, str]:
    """The encoder's compute and parameter dtypes, for the layers a tower adds after it."""
    net = self.vit if self.vit is not None else self.convnext
    return dict(dtype=net.dtype, param_dtype=net.param_dtype)

  @property
  def grid(self) -> int:
    """Side of the feature map."""
    if self.vit is not None:
      return self.image_size // self.vit.patch_size
    return self.image_size // (convnext_lib.STEM_PATCH * 2 ** (self.select % self.convnext.num_stages))


class Encoder(nn.Module):
  spec: EncoderSpec

  @nn.compact
  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B h w C"]:
    spec = self.spec
    x = resize_images(images, spec.image_size, align_corners=True)
    if spec.vit is not None:
      hidden = vit_lib.ViT(spec.vit, name="vit").hidden_states(x)[spec.select]
      hidden = hidden[:, spec.vit.prefix_tokens:]
      return hidden.reshape(hidden.shape[0], spec.grid, spec.grid, hidden.shape[-1])
    return convnext_lib.ConvNeXt(spec.convnext, name="convnext")(x)[spec.select]


def from_config(block, common: dict) -> tuple[EncoderSpec, ...]:
  """The encoders `block.encoders` names (comma-separated, in order): "vit" (block.vit's ViT at
  its image_size, hidden state `select_layer`) and / or "convnext" (block.convnext at the
  tower's image_size, stage `convnext_stage`); EAGLE's and LEO's `c.model.tower`."""
  specs = {"vit": lambda: EncoderSpec(vit=vit_lib.from_block(block.vit, common),
                                      image_size=block.vit.image_size, select=block.select_layer),
           "convnext": lambda: EncoderSpec(convnext=convnext_lib.from_block(block.convnext,
                                                                            common),
                                           image_size=block.image_size,
                                           select=block.convnext_stage)}
  names = [n.strip() for n in block.encoders.split(",")]
  if not names or any(n not in specs for n in names) or len(set(names)) != len(names):
    raise ValueError(f"model.tower.encoders={block.encoders!r} must name distinct encoders from "
                     f"{sorted(specs)}, comma-separated.")
  return tuple(specs[n]() for n in names)
