"""InternLM-XComposer2-4KHD's dynamic patch division in the default setup: the image resized and
white-padded to whole tiles (at most `hd_num`, aspect kept), a global view of the whole canvas,
every tile through one ViT, 2×2 token merge, a learned newline token after every row and a
separator between the global and the local views. See configs/default.py for every field.

  python train.py --config configs/xcomposer2_4khd.py:size=tiny,steps=20 --workdir /tmp/hd
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="xcomposer")
