"""InternLM-XComposer2-4KHD's dynamic patch division: the image resized and white-padded to whole
tiles (at most `hd_num`, aspect kept), a global view of the whole canvas, every tile through one
ViT, 2×2 token merge, a learned newline token after every row and a separator between the global
and the local views. configs/common.py documents the arguments and the shared fields.

  python train.py --config configs/xcomposer2_4khd.py:size=tiny,steps=20 --workdir /tmp/hd
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  side = a.res or (336 if a.big else a.s.image)
  grid = side // a.patch + (side // a.patch) % 2  # The ViT's grid, even for the 2×2 merge.
  tower = common.block(
      name="xcomposer",
      vit=common.vit_block(a, 336 if a.big else grid * a.patch),  # Its image_size: the tile.
      # The ViT's last hidden state, class token dropped: the authors' 4KHD build_mlp.py
      # (`CLIPVisionTower`: select_layer -1, 'patch').
      select_layer=-1,
      hd_num=25 if a.big else 4)  # Most tiles of the HD canvas (HD-25).
  return common.config(a, tower, common.mlp("mlp2x_gelu"))
