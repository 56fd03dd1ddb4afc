"""InternVL 1.5's dynamic aspect-ratio tiling in the default setup: each image cut into the tile
grid closest to its aspect ratio (plus a thumbnail), every tile through one ViT, pixel unshuffle
to a quarter of the tokens. See configs/default.py for every field.

  python train.py --config configs/internvl15.py:size=tiny,steps=20 --workdir /tmp/internvl
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  a = config_args.parse(arg, size="small", steps=500, res=0, patch=0)
  return config_args.get_config(pathlib.Path(__file__).with_name("default.py"),
                                f"size={a.size},steps={a.steps},res={a.res},patch={a.patch},"
                                "tower=internvl")
