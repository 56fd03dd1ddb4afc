"""InternVL 1.5's dynamic aspect-ratio tiling in the default setup: each image cut into the tile
grid closest to its aspect ratio (plus a thumbnail), every tile through one ViT, pixel unshuffle
to a quarter of the tokens. See configs/default.py for every field.

  python train.py --config configs/internvl15.py:size=tiny,steps=20 --workdir /tmp/internvl
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="internvl")
