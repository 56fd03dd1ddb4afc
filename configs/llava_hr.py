"""LLaVA-HR: a high-resolution ConvNeXt injects its last-stage map into a low-resolution ViT through
MR-adapters between ViT blocks (luogen1996/LLaVA-HR; mmjax/models/towers/llava_hr.py). At every
size the LLM gets as many visual tokens as LLaVA-1.5's ViT gives. configs/common.py documents the
arguments and the shared fields.

  python train.py --config configs/llava_hr.py:size=tiny,steps=20 --workdir /tmp/llava_hr
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  high = a.res or (1024 if a.big else a.s.high)
  # The authors' ViT side for a high resolution S: max(S / 32 · 14, 336) = 448 at 1024.
  low = max(high // 32 * a.patch, 336) if a.big else a.s.image
  tower = common.block(
      name="llava_hr",
      image_size=high,  # The tower's input side (the ConvNeXt's).
      # The ViT; its image_size is its position table's side: at the papers' size CLIP-336's,
      # resampled to the 448-px input as the authors do, so a converted CLIP-L/14-336 loads.
      vit=common.vit_block(a, 336 if a.big else low),
      vit_input=low,  # The ViT's input side (a bilinear downsample of the image).
      convnext=common.convnext_block(a),  # mmjax.models.convnext.ConvNeXtConfig's fields.
      adapter_gate="scalar",  # MR-adapter gate: "scalar" (the authors' code) or "channel" (paper).
      adapter_after=())  # ViT blocks followed by an adapter; (): depth/4 · {1, 2, 3}.
  return common.config(a, tower, common.mlp("mlp2x_gelu"))
