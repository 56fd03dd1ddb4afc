"""Qwen2-VL's native resolution: each image encoded near its own size and aspect ratio
(smart_resize within a patch budget equal to LLaVA-1.5's ViT's token count), patches through a
2D-RoPE ViT, 2×2 merging to the LLM's width, M-RoPE positions in the LLM. configs/common.py
documents the arguments and the shared fields.

  python train.py --config configs/qwen2vl.py:size=tiny,steps=20 --workdir /tmp/qwen2vl
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg)
  side = a.res or (336 if a.big else a.s.image)
  vit = common.vit_block(a, side)
  tower = common.block(
      name="qwen2vl",
      # mmjax.models.native_vit.NativeViTConfig's fields: Qwen2-VL's own linear patch map.
      vit=common.block(**{k: vit[k] for k in ("patch_size", "width", "depth", "num_heads",
                                              "mlp_dim", "act")}),
      max_patches=4 * (side // a.patch) ** 2,  # Patches per image (static budget).
      min_pixels=(4 * a.patch) ** 2)  # Smallest encoded area (2×2 LLM tokens).
  # The patch merger maps to the LLM's width.
  return common.config(a, tower, common.mlp("identity"), mrope=True)
