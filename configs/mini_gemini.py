"""Mini-Gemini: low-resolution ViT tokens mine their regions of a high-resolution ConvNeXt map
(patch-info mining; MGM-HD adds a global view and 2×2 crops). configs/common.py documents the
arguments and the shared fields.

  python train.py --config configs/mini_gemini.py:size=tiny,steps=20 --workdir /tmp/mini_gemini
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  high = a.res or (768 if a.big else a.s.high)
  low = 336 if a.big else a.s.image
  tower = common.block(
      name="mini_gemini",
      image_size=high,  # The tower's input side (the ConvNeXt's); MGM-HD: 1536.
      vit=common.vit_block(a, low),  # The low-resolution ViT (the queries).
      convnext=common.convnext_block(a),  # The high-resolution ConvNeXt (keys and values).
      select_layer=-2,  # ViT hidden state used as the queries (LLaVA's penultimate).
      hd=False)  # MGM-HD: global view + 2×2 crops (5× the tokens).
  return common.config(a, tower, common.mlp("mlp2x_gelu"))
