"""Oryx's image path: a low-resolution view (about low_res² pixels) and the native view (images
over max_res² pixels shrunk to it, others grey-padded to whole patch pairs), one ViT over both
packed into one sequence with its learned position table resized to each view's grid, the dynamic
compressor (1× for images; `--config.model.tower.ratio=2` or 4 for its 4× / 16× video modes)
and the two-view projector with newline, separator, begin and end tokens. configs/common.py
documents the arguments and the shared fields.

  python train.py --config configs/oryx.py:size=tiny,steps=20 --workdir /tmp/oryx
"""
import pathlib

from mmjax import config_args

common = config_args.load_module(pathlib.Path(__file__).with_name("common.py"))


def get_config(arg: str | None = None):
  a = common.parse(arg, paper_patch=16)  # SigLIP-so400m/16 at the papers' size.
  high = a.res or (1536 if a.big else a.s.high)
  vit = common.vit_block(a, a.patch, variant="so400m" if a.big else None)
  tower = common.block(
      name="oryx",
      # SigLIP's blocks (erf GELU) on packed patches, with its own linear patch map.
      vit=common.block(**{k: vit[k] for k in ("patch_size", "width", "depth", "num_heads",
                                              "mlp_dim")}, act="gelu"),
      low_res=384 if a.big else a.s.image,  # The low view holds about low_res² pixels.
      max_res=high,  # The native view holds at most max_res² pixels.
      ratio=1,  # Compressor pooling per side (1: images; 2 / 4: its video modes' 4× / 16×).
      # Side of the learned position table, resized to every view's grid (SigLIP's 128).
      pos_table=128 if a.big else high // a.patch,
      # Longest aspect ratio its static budget holds; the embedded dataset's 3:1 is up to 3.006
      # in whole pixels (scenes.SceneSpec.pixel_aspect), and a longer one is refused.
      max_aspect=3.01)
  return common.config(a, tower, common.mlp("identity"))
