"""InternVL 1.5's dynamic aspect-ratio tiling: each image cut into the tile grid closest to its
aspect ratio (plus a thumbnail), every tile through one ViT, pixel unshuffle to a quarter of the
tokens. configs/common.py documents the arguments and the shared fields.

  python train.py --config configs/internvl15.py:size=tiny,steps=20 --workdir /tmp/internvl
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  side = a.res or (448 if a.big else a.s.image)
  grid = side // a.patch + (side // a.patch) % 2  # The ViT's grid, even for pixel unshuffle.
  tile = 448 if a.big else grid * a.patch  # The paper's 448 px; at CPU sizes an even grid.
  tower = common.block(
      name="internvl",
      vit=common.vit_block(a, tile),  # Its image_size is the tile side.
      # Most grid tiles (a thumbnail comes on top): 12 as in the paper; at CPU sizes all tiles
      # together give about as many tokens as LLaVA-1.5's ViT alone.
      max_num=12 if a.big else max(round((side // a.patch) ** 2 / (grid // 2) ** 2) - 1, 1))
  return common.config(a, tower, common.mlp("mlp2x_gelu"))
