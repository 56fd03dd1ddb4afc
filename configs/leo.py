"""LEO: two encoders, each pixel-unshuffled to one grid and projected to the LLM's width by its own
MLP, their tokens interleaved (Mozhgan91/LEO; mmjax/models/towers/leo.py). The LLM gets twice
LLaVA-1.5's visual tokens. configs/common.py documents the arguments and the shared fields.

  python train.py --config configs/leo.py:size=tiny,steps=20 --workdir /tmp/leo
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  high = a.res or (1024 if a.big else a.s.high)
  low = 448 if a.big else a.s.image
  tower = common.block(
      name="leo",
      image_size=high,  # The tower's input side (the convolutional encoder's).
      encoders="vit,convnext",  # As EAGLE's (configs/eagle.py).
      vit=common.vit_block(a, low),
      select_layer=-1,  # The ViT's hidden state: the last, as in the authors' code.
      convnext=common.convnext_block(a),
      convnext_stage=-1,
      # Token grid side per encoder: the ViT's grid (pixel-unshuffled to 16 at the papers' size).
      grid=low // a.patch // (2 if a.big else 1))
  # LEO projects per encoder inside its tower.
  return common.config(a, tower, common.mlp("identity"))
