"""LLaVA-OneVision's AnyRes: the image resized into the canvas of crops that keeps most of it
(after a squashed base image), every crop through one ViT and the projector, the crops' tokens
laid out as one map, unpadded, bilinearly shrunk to `anyres_max` crops' worth, and a learned
newline token after every row. configs/common.py documents the arguments and the shared fields.

  python train.py --config configs/llava_onevision.py:size=tiny,steps=20 --workdir /tmp/ov
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  # SigLIP's 384-px crops with patch 14 read 378 px (27 × 27 patches).
  side = a.res or (378 if a.big else a.s.image)
  tower = common.block(
      name="onevision",
      vit=common.vit_block(a, side),  # Its image_size is the crop side.
      # The penultimate hidden state: LLaVA-OneVision's code deletes SigLIP's last layer and
      # feeds the last one left.
      select_layer=-2,
      projector="mlp2x_gelu",  # Per crop token, before the map is resampled.
      anyres_grid=6 if a.big else 2,  # Canvases of 1…anyres_grid crops a side (OneVision: 6).
      anyres_max=9 if a.big else 4)  # The map shrunk to about this many crops (`anyres_max_9`).
  # The tower projects each crop's tokens itself.
  return common.config(a, tower, common.mlp("identity"))
