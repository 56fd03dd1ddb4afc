"""LLaVA-1.5 with a 2×2 average pool before the projector (the `avg_pool` connector): the decoder
gets a quarter of the ViT's tokens. configs/common.py documents the arguments and the shared
fields; configs/llava15.py the tower.

  python train.py --config configs/llava15_pool.py:size=tiny,steps=20 --workdir /tmp/pool
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))
llava15 = config_args.load_module(pathlib.Path(__file__).with_name("llava15.py"))


def get_config(arg: str | None = None):
  c = llava15.get_config(arg)
  with c.unlocked():
    # window × window tokens averaged, then LLaVA-1.5's projector.
    c.model.connector = common.block(name="avg_pool", window=2, kind="mlp2x_gelu")
  return c
