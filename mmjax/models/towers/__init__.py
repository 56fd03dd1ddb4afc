"""Vision towers: pixels in, a sequence of features out (one concept per file).

A tower maps `images [B, S, S, 3]` (normalised pixels at the tower's input side) to features
`[B, N, C]`; its config says `width` (C) and `num_tokens` (N), so the data pipeline budgets the
placeholders before any encoding. Towers are chosen by name (`TOWERS`) in configs.

  vit          LLaVA-1.5: one ViT                                        (vit_tower.py)
  llava_hr     ConvNeXt at high res injected into a low-res ViT          (llava_hr.py)
  mini_gemini  low-res tokens mine their high-res regions (+ MGM-HD)     (mini_gemini.py)
  eagle        encoders interpolated to one grid, channels concatenated  (eagle.py)
  leo          per-encoder pixel unshuffle + projector, tokens interleaved (leo.py)
  qwen2vl      native-resolution ViT on packed patches, 2x2 merger       (qwen2vl.py)
  internvl     dynamic aspect-ratio tiles (+ thumbnail), unshuffled ViT  (internvl.py)
  onevision    AnyRes crops, projected, unpadded and shrunk into one map (onevision.py)
  xcomposer    HD canvas tiles + global view, 2x2 merge, newline/separator (xcomposer.py)
  oryx         low-res + native views, resized position table, compressor (oryx.py)

A dynamic-resolution tower reads other batch keys than `images` (its config's `INPUTS`), and its
token count depends on the image (the policy's `num_tokens`, `mmjax.data.pipeline`): the image's
tokens come first, padding after them.
"""
import flax.linen as nn

from mmjax.models.towers.eagle import EagleTower, EagleTowerConfig
from mmjax.models.towers.encoders import EncoderSpec
from mmjax.models.towers.internvl import InternVLTower, InternVLTowerConfig
from mmjax.models.towers.leo import LEOTower, LEOTowerConfig
from mmjax.models.towers.llava_hr import LLaVAHRTower, LLaVAHRTowerConfig
from mmjax.models.towers.mini_gemini import MiniGeminiTower, MiniGeminiTowerConfig
from mmjax.models.towers.onevision import OneVisionTower, OneVisionTowerConfig
from mmjax.models.towers.oryx import OryxTower, OryxTowerConfig
from mmjax.models.towers.qwen2vl import Qwen2VLTower, Qwen2VLTowerConfig
from mmjax.models.towers.vit_tower import ViTTower, ViTTowerConfig
from mmjax.models.towers.xcomposer import XComposerTower, XComposerTowerConfig

TowerConfig = (ViTTowerConfig | LLaVAHRTowerConfig | MiniGeminiTowerConfig | EagleTowerConfig
               | LEOTowerConfig | Qwen2VLTowerConfig | InternVLTowerConfig | OneVisionTowerConfig
               | XComposerTowerConfig | OryxTowerConfig)

TOWERS = {
    "vit": (ViTTowerConfig, ViTTower),
    "llava_hr": (LLaVAHRTowerConfig, LLaVAHRTower),
    "mini_gemini": (MiniGeminiTowerConfig, MiniGeminiTower),
    "eagle": (EagleTowerConfig, EagleTower),
    "leo": (LEOTowerConfig, LEOTower),
    "qwen2vl": (Qwen2VLTowerConfig, Qwen2VLTower),
    "internvl": (InternVLTowerConfig, InternVLTower),
    "onevision": (OneVisionTowerConfig, OneVisionTower),
    "xcomposer": (XComposerTowerConfig, XComposerTower),
    "oryx": (OryxTowerConfig, OryxTower),
}


def inputs(config: TowerConfig) -> tuple[str, ...]:
  """The batch keys a tower reads, in the order of its arguments."""
  return getattr(config, "INPUTS", ("images",))


# Every batch key some tower reads (the train step passes these to the model).
ALL_INPUTS = tuple(dict.fromkeys(k for config_type, _ in TOWERS.values()
                                 for k in getattr(config_type, "INPUTS", ("images",))))


def tower_for(config: TowerConfig) -> nn.Module:
  for config_type, module in TOWERS.values():
    if isinstance(config, config_type):
      return module(config, name="tower")
  raise ValueError(f"No tower takes a {type(config).__name__}; towers: {sorted(TOWERS)}.")
