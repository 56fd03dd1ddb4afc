"""Oryx's image path in the default setup: a low-resolution view (about low_res² pixels) and the
native view (images over image_size² pixels shrunk to it, others grey-padded to whole patch
pairs), one ViT over both packed into one sequence with its learned position table resized to
each view's grid, the dynamic compressor (1× for images; `--config.model.oryx_ratio=2` or 4 for
its 4× / 16× video modes) and the two-view projector with newline, separator, begin and end
tokens. See configs/default.py for every field.

  python train.py --config configs/oryx.py:size=tiny,steps=20 --workdir /tmp/oryx
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="oryx")
