"""Vision towers: pixels in, a sequence of features out (one concept per file).

A tower maps `images [B, S, S, 3]` (normalised pixels at the tower's input side) to features
`[B, N, C]`; its config says `width` (C) and `num_tokens` (N), so the data pipeline budgets the
placeholders before any encoding. Towers are chosen by name (`TOWERS`) in configs.

  vit          LLaVA-1.5: one ViT                                        (vit.py)     
  llava_hr     ConvNeXt at high res injected into a low-res ViT          (llava_hr.py)
  mini_gemini  low-res tokens mine their high-res regions (+ MGM-HD)     (mini_gemini.py)
  eagle        encoders interpolated to one grid, channels concatenated  (eagle.py)
  leo          per-encoder pixel unshuffle + projector, tokens interleaved (leo.py)
  qwen2vl      native-resolution ViT on packed patches, 2x2 merger       (qwen2vl.py)
  internvl     dynamic aspect-ratio tiles (+ thumbnail), unshuffled ViT  (internvl.py)
  onevision    AnyRes crops, projected, unpadded and shrunk into one map (onevision.py)
  xcomposer    HD canvas tiles + global view, 2x2 merge, newline/separator (xcomposer.py)
  oryx         low-res + native views, resized position table, compressor (oryx.py)

Each tower file registers its config, module and config-block builder (`base.register`); every
module of this package is imported here, so a new tower is its file, its config and its tests.
The interface (`base.TowerConfig`) says which batch keys a tower reads (`INPUTS`), its width, its
most visual tokens, a row's visual tokens and its resolution policy: the image's tokens come
first, padding after them.
"""
import importlib
import pkgutil

from mmjax.models.towers import base
from mmjax.models.towers.base import TowerConfig, from_config
from mmjax.models.towers.eagle import EagleTower, EagleTowerConfig
from mmjax.models.towers.encoders import EncoderSpec
from mmjax.models.towers.internvl import InternVLTower, InternVLTowerConfig
from mmjax.models.towers.leo import LEOTower, LEOTowerConfig
from mmjax.models.towers.llava_hr import LLaVAHRTower, LLaVAHRTowerConfig
from mmjax.models.towers.mini_gemini import MiniGeminiTower, MiniGeminiTowerConfig
from mmjax.models.towers.onevision import OneVisionTower, OneVisionTowerConfig
from mmjax.models.towers.oryx import OryxTower, OryxTowerConfig
from mmjax.models.towers.qwen2vl import Qwen2VLTower, Qwen2VLTowerConfig
from mmjax.models.towers.vit import ViTTower, ViTTowerConfig
from mmjax.models.towers.xcomposer import XComposerTower, XComposerTowerConfig

# Every tower file registers itself on import; the names above are shortcuts for tests and users.
for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

TOWERS = base.REGISTRY


def inputs(config: TowerConfig) -> tuple[str, ...]:
  """The batch keys a tower reads, in the order of its arguments."""
  return tuple(config.INPUTS)


# Every batch key some tower reads (the train step passes these to the model).
ALL_INPUTS = tuple(dict.fromkeys(k for e in TOWERS.values() for k in e.config.INPUTS))


def tower_for(config: TowerConfig):
  """The tower module taking `config` (named "tower")."""
  return base.module_for(config)
