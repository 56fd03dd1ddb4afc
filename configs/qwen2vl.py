"""Qwen2-VL's native resolution in the default setup: each image encoded near its own size and
aspect ratio (smart_resize within a patch budget equal to the ViT's token count), patches through
a 2D-RoPE ViT, 2×2 merging, M-RoPE positions in the LLM. See configs/default.py for every field.

  python train.py --config configs/qwen2vl.py:size=tiny,steps=20 --workdir /tmp/qwen2vl
"""
import pathlib

from mmjax import config_args


def get_config(arg: str | None = None):
  return config_args.with_fixed(pathlib.Path(__file__).with_name("default.py"), arg,
                                tower="qwen2vl")
