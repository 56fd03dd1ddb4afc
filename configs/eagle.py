"""EAGLE: vision encoders interpolated to one token grid, their channels concatenated (or their
sequences appended), then LLaVA's projector (NVlabs/EAGLE; mmjax/models/towers/eagle.py).
configs/common.py documents the arguments and the shared fields.

  python train.py --config configs/eagle.py:size=tiny,steps=20 --workdir /tmp/eagle
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  high = a.res or (1024 if a.big else a.s.high)
  # The authors' "clip-448" runs at 336 (its tower's input_image_size), its 24×24 map
  # interpolated to the 32×32 grid of the 1024-px ConvNeXt.
  low = 336 if a.big else a.s.image
  tower = common.block(
      name="eagle",
      image_size=high,  # The tower's input side (the ConvNeXt's).
      # Its encoders, in order, from "vit" (the low-res ViT) and "convnext" (the high-res
      # ConvNeXt); one alone makes a single-encoder tower, e.g. "convnext" to pre-train the
      # ConvNeXt that LLaVA-HR and Mini-Gemini share (benchmarks/ablation.py).
      encoders="vit,convnext",
      vit=common.vit_block(a, low),
      select_layer=-1,  # The ViT's hidden state: the last, as in the authors' code.
      convnext=common.convnext_block(a),
      convnext_stage=-1,  # The ConvNeXt stage whose map is used.
      grid=high // 32 if a.big else low // a.patch,  # Token grid side (the ViT's at CPU sizes).
      fusion="channel")  # "channel" concat or "sequence" append.
  return common.config(a, tower, common.mlp("mlp2x_gelu"))
