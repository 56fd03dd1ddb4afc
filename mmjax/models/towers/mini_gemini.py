"""Mini-Gemini's tower (METHODS §2.2): low-resolution ViT tokens mine their own M×M regions of a
high-resolution ConvNeXt map (all stages upsampled to stride 4 and concatenated).

MGM-HD (`hd=True`): the low-resolution views are a global view plus a 2×2 grid of crops of the
image at twice the ViT's side, and the high-resolution map is split the same way (the global
view's is the whole map bilinearly halved); tokens are ordered [global, crops row-major].

Exact to the authors' code (dvlab-research/MGM @769820c: `mgm/model/mgm_arch.py`'s
`encode_images` and `unified_resampler`, the views made as in `mgm/train/train.py`;
tests/test_tower_references.py): every view is a bilinear resize with align_corners=False of the
normalised high-resolution image, the HD global view a resize of the 2×-side image rather than
of the original; the ViT's penultimate hidden state, class token dropped after the blocks.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import convnext as convnext_lib
from mmjax.models import interpolate
from mmjax.models import layers
from mmjax.models import patch_mining
from mmjax.models import vit as vit_lib
from mmjax.models.towers import base
from mmjax.models.towers import encoders
from mmjax.shapes import Array, Float

HD_GRID = 2  # MGM-HD's crops per side.


@dataclasses.dataclass(frozen=True)
class MiniGeminiTowerConfig(base.OneSquareView):
  vit: vit_lib.ViTConfig = vit_lib.ViTConfig(image_size=336)  # Low-res branch (CLIP ViT-L/14).
  convnext: convnext_lib.ConvNeXtConfig = convnext_lib.ConvNeXtConfig()  # High-res branch.
  image_size: int = 768  # The tower's input side (the ConvNeXt's); MGM-HD: 1536.
  select_layer: int = -2  # ViT hidden state used as the queries (LLaVA's penultimate).
  hd: bool = False  # MGM-HD: global view + 2×2 crops, 5× the tokens.

  def __post_init__(self):
    views = HD_GRID if self.hd else 1
    stride4 = self.image_size // convnext_lib.STEM_PATCH
    if self.image_size % (32 * views) or stride4 % (self.vit.grid * views):
      raise ValueError(f"image_size={self.image_size}: its stride-4 map ({stride4}) must split "
                       f"into {views}x{views} views of whole {self.vit.grid}x{self.vit.grid} "
                       "regions, and the size must be a multiple of the ConvNeXt's 32 per view.")
    vit_lib.check_select_layer(self.vit, self.select_layer)

  @property
  def width(self) -> int:
    return self.vit.width

  @property
  def region(self) -> int:
    """M: the side of the high-resolution region under each token."""
    views = HD_GRID if self.hd else 1
    return self.image_size // convnext_lib.STEM_PATCH // views // self.vit.grid

  def num_tokens(self, height: int, width: int) -> int:
    del height, width
    return self.vit.grid ** 2 * (1 + HD_GRID ** 2 if self.hd else 1)


def _crops(x: Float[Array, "B H W C"], n: int) -> Float[Array, "_rows h w C"]:
  """The n×n grid of crops, row-major, folded into the batch."""
  b, h, w, c = x.shape
  x = x.reshape(b, n, h // n, n, w // n, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b * n * n, h // n, w // n, c)


class MiniGeminiTower(nn.Module):
  config: MiniGeminiTowerConfig

  @nn.compact
  def __call__(self, images: Float[Array, "B R R 3"]) -> Float[Array, "B N C"]:
    cfg = self.config
    if images.shape[1:3] != (cfg.image_size, cfg.image_size):
      raise ValueError(f"Mini-Gemini expects {cfg.image_size}x{cfg.image_size} images, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    b = images.shape[0]
    maps = convnext_lib.ConvNeXt(cfg.convnext, name="convnext")(images)
    side = maps[0].shape[1]
    high = jnp.concatenate([interpolate.resize(m, (side, side), "bilinear") for m in maps], -1)
    high = layers.constrain(high, ("batch", "height", "width", "conv_in"))

    low_side = cfg.vit.image_size
    if cfg.hd:
      # The crops and the global view both come from the image at twice the ViT's side.
      doubled = encoders.resize_images(images, HD_GRID * low_side, align_corners=False)
      views = [encoders.resize_images(doubled, low_side, align_corners=False),
               _crops(doubled, HD_GRID)]
      highs = [interpolate.resize(high, (side // HD_GRID,) * 2, "bilinear"), _crops(high, HD_GRID)]
    else:
      views, highs = [encoders.resize_images(images, low_side, align_corners=False)], [high]
    vit = vit_lib.ViT(cfg.vit, name="vit")
    mining = patch_mining.PatchInfoMining(dtype=cfg.vit.dtype, param_dtype=cfg.vit.param_dtype,
                                          name="mining")
    grid = (cfg.vit.grid, cfg.vit.grid)
    tokens = []
    for view, view_high in zip(views, highs):
      x = vit.hidden_states(view)[cfg.select_layer][:, cfg.vit.prefix_tokens:]
      x = mining(x, grid, view_high)
      tokens.append(x.reshape(b, -1, x.shape[-1]))
    return layers.constrain(jnp.concatenate(tokens, axis=1), ("batch", "length", "embed"))


def from_config(block, common: dict, llm_width: int) -> MiniGeminiTowerConfig:
  """`c.model.tower`: `image_size`, `vit` and `convnext` (their configs' fields),
  `select_layer`, `hd`."""
  del llm_width
  return MiniGeminiTowerConfig(
      vit=vit_lib.from_block(block.vit, common),
      convnext=convnext_lib.from_block(block.convnext, common), image_size=block.image_size,
      select_layer=block.select_layer, hd=block.hd)


base.register("mini_gemini", MiniGeminiTowerConfig, MiniGeminiTower, from_config)
