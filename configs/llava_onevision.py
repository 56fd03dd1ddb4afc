"""LLaVA-OneVision's AnyRes in the default setup: the image resized into the canvas of crops that
keeps most of it (after a squashed base image), every crop through one ViT and the projector, the
crops' tokens laid out as one map, unpadded, bilinearly shrunk to `anyres_max` crops' worth, and a
learned newline token after every row. See configs/default.py for every field.

  python train.py --config configs/llava_onevision.py:size=tiny,steps=20 --workdir /tmp/ov
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="onevision")
