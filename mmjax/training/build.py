"""From an ml-collections config to the objects training and evaluation use."""
import dataclasses
import pathlib
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from mmjax.convert import files
from mmjax.convert import layout
from mmjax.convert import mapping
from mmjax.data import bpe
from mmjax.data import pipeline
from mmjax.data import tokenizer as tokenizer_lib
from mmjax.data.datasets import finedetail
from mmjax.data.datasets import questions
from mmjax.data.datasets import scenes
from mmjax.models import convnext
from mmjax.models import llm
from mmjax.models import mllm
from mmjax.models import mr_adapter
from mmjax.models import native_vit
from mmjax.models import towers
from mmjax.models import vit


def tokenizer(c: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
  """`data.tokenizer`: "byte", "bpe:N" (learned from the dataset's training split on first use,
  then read from beside the dataset) or a tokenizer.json path."""
  spec = c.data.tokenizer
  if spec == "byte":
    return tokenizer_lib.ByteTokenizer()
  if spec.startswith("bpe:"):
    size = spec.removeprefix("bpe:")
    if not size.isdigit():
      raise ValueError(f"data.tokenizer={spec!r}: 'bpe:N' takes a vocabulary size, e.g. "
                       "'bpe:1024'.")
    spec = bpe.cached(dataset_dir(c) / f"bpe{size}.json", lambda: data_source(c, "train"),
                      int(size))
  return tokenizer_lib.HFTokenizer.from_file(spec, eos="</s>", pad="<unk>", bos="<s>")


def _vit(m: ml_collections.ConfigDict, image_size: int, common: dict) -> vit.ViTConfig:
  return vit.ViTConfig(image_size=image_size, patch_size=m.patch_size, width=m.vit_width,
                       depth=m.vit_depth, num_heads=m.vit_heads, mlp_dim=m.vit_mlp_dim,
                       act=m.vit_act, stem=m.vit_stem, **common)


def _convnext(m: ml_collections.ConfigDict, common: dict) -> convnext.ConvNeXtConfig:
  return convnext.ConvNeXtConfig(widths=tuple(m.convnext_widths), depths=tuple(m.convnext_depths),
                                 layer_scale_init=m.convnext_layer_scale, dtype=common["dtype"],
                                 param_dtype=common["param_dtype"],
                                 scan_layers=common["scan_layers"], remat=common["remat"])


def _mixed_encoders(m: ml_collections.ConfigDict, common: dict) -> tuple[towers.EncoderSpec, ...]:
  """EAGLE / LEO's encoders named by `model.encoders`: the low-resolution ViT and / or the
  high-resolution ConvNeXt, in the order given."""
  specs = {"vit": lambda: towers.EncoderSpec(vit=_vit(m, m.low_res, common), image_size=m.low_res,
                                             select=m.select_layer),
           "convnext": lambda: towers.EncoderSpec(convnext=_convnext(m, common),
                                                  image_size=m.image_size,
                                                  select=m.convnext_stage)}
  names = [n.strip() for n in m.encoders.split(",")]
  if not names or any(n not in specs for n in names) or len(set(names)) != len(names):
    raise ValueError(f"model.encoders={m.encoders!r} must name distinct encoders from "
                     f"{sorted(specs)}, comma-separated.")
  return tuple(specs[n]() for n in names)


# Towers that embed packed patches with one linear map of their own (Qwen2-VL's, SigLIP's), not
# through a ViT's stem: `model.vit_stem` must be "patch" for them.
LINEAR_PATCH_TOWERS = ("qwen2vl", "oryx")


def tower_config(m: ml_collections.ConfigDict, llm_width: int, common: dict) -> towers.TowerConfig:
  """The tower named by `model.tower`, from the flat `model` fields (see configs/default.py)."""
  name = m.tower
  if name not in towers.TOWERS:
    raise ValueError(f"Unknown tower {name!r}; valid: {sorted(towers.TOWERS)}.")
  if name in LINEAR_PATCH_TOWERS and m.vit_stem != "patch":
    raise ValueError(f"model.vit_stem={m.vit_stem!r}: the {name} tower embeds packed patches with "
                     "one linear map (its paper's); valid for it: 'patch'.")
  if name == "vit":
    return towers.ViTTowerConfig(_vit(m, m.image_size, common), select_layer=m.select_layer)
  if name == "llava_hr":
    return towers.LLaVAHRTowerConfig(
        vit=_vit(m, m.vit_table or m.low_res, common), convnext=_convnext(m, common),
        image_size=m.image_size, vit_input=m.low_res,
        adapter=mr_adapter.MRAdapterConfig(gate=m.adapter_gate),
        adapter_after=tuple(m.adapter_after))
  if name == "mini_gemini":
    return towers.MiniGeminiTowerConfig(
        vit=_vit(m, m.low_res, common), convnext=_convnext(m, common), image_size=m.image_size,
        select_layer=m.select_layer, hd=m.mgm_hd)
  if name == "qwen2vl":
    return towers.Qwen2VLTowerConfig(
        vit=native_vit.NativeViTConfig(
            patch_size=m.patch_size, width=m.vit_width, depth=m.vit_depth, num_heads=m.vit_heads,
            mlp_dim=m.vit_mlp_dim, act=m.vit_act, out_width=llm_width, **common),
        max_patches=m.max_patches)
  if name == "internvl":
    return towers.InternVLTowerConfig(vit=_vit(m, m.tile, common), max_num=m.max_num)
  if name == "xcomposer":
    return towers.XComposerTowerConfig(vit=_vit(m, m.tile, common), select_layer=m.select_layer,
                                       hd_num=m.hd_num, budget=hd_crops(m).budget)
  if name == "oryx":
    views = oryx_views(m)
    return towers.OryxTowerConfig(
        vit=vit.ViTConfig(image_size=m.patch_size, patch_size=m.patch_size, width=m.vit_width,
                          depth=m.vit_depth, num_heads=m.vit_heads, mlp_dim=m.vit_mlp_dim,
                          act=m.vit_act, norm_eps=1e-6, use_cls=False, pre_norm=False,
                          position_embedding="none", **common),
        table=m.pos_table, ratio=m.oryx_ratio, out_width=llm_width,
        max_patches=views.max_patches, budget=views.budget)
  if name == "onevision":
    crops = anyres_crops(m)
    return towers.OneVisionTowerConfig(
        vit=_vit(m, m.image_size, common), select_layer=m.select_layer,
        projector=m.anyres_projector, out_width=llm_width, max_crops_in=crops.max_crops_in,
        budget=crops.budget)
  if name == "eagle":
    return towers.EagleTowerConfig(encoders=_mixed_encoders(m, common), image_size=m.image_size,
                                   grid=m.grid, fusion=m.fusion)
  return towers.LEOTowerConfig(encoders=_mixed_encoders(m, common), image_size=m.image_size,
                               grid=m.grid, out_width=llm_width)


def model_config(c: ml_collections.ConfigDict, vocab_size: int) -> mllm.MLLMConfig:
  m = c.model
  common = dict(scan_layers=m.scan_layers, remat=m.remat, dtype=m.dtype,
                param_dtype=m.param_dtype, attention_impl=m.attention_impl)
  decoder = llm.LLMConfig(vocab_size=m.vocab_size or vocab_size, width=m.llm_width,
                          depth=m.llm_depth, num_heads=m.llm_heads, num_kv_heads=m.llm_kv_heads,
                          mlp_dim=m.llm_mlp_dim, rope_theta=m.rope_theta,
                          mrope_sections=tuple(m.mrope_sections), **common)
  if decoder.vocab_size < vocab_size:
    raise ValueError(f"model.vocab_size={decoder.vocab_size} is smaller than the tokenizer's "
                     f"{vocab_size}.")
  return mllm.MLLMConfig(tower=tower_config(m, decoder.width, common), llm=decoder,
                         projector=m.projector, image_token_id=tokenizer_lib.IMAGE_ID)


def _dataset(c: ml_collections.ConfigDict) -> tuple[str, str]:
  """`data.dataset` as ("fine_detail", its builder config) or ("llava_json", its directory)."""
  name = c.data.dataset
  for kind, sep in (("fine_detail", "/"), ("llava_json", ":")):
    if name.startswith(kind + sep):
      return kind, name[len(kind) + 1:]
  raise ValueError(f"Unknown dataset {name!r}; valid: 'fine_detail/<tiny|small|large>' or "
                   "'llava_json:<directory written by mmjax.data.ingest>'.")


def dataset_dir(c: ml_collections.ConfigDict) -> pathlib.Path:
  """The directory holding `data.dataset` (the embedded one generated on first use)."""
  kind, arg = _dataset(c)
  if kind == "fine_detail":
    return pathlib.Path(finedetail.prepare(arg, c.data.data_dir).data_dir)
  return pathlib.Path(arg)


def data_source(c: ml_collections.ConfigDict, split: str):
  """The TFDS data source of `split` for `data.dataset` (generated on first use if embedded)."""
  kind, arg = _dataset(c)
  if kind == "fine_detail":
    return finedetail.prepare(arg, c.data.data_dir).as_data_source()[split]
  from mmjax.data import ingest
  sources = ingest.load(arg)
  if split not in sources:
    raise ValueError(f"Dataset {c.data.dataset!r} has no split {split!r}; it has "
                     f"{sorted(sources)}.")
  return sources[split]


def anyres_crops(m: ml_collections.ConfigDict) -> pipeline.AnyResCrops:
  """LLaVA-OneVision's crops: canvases of 1…anyres_grid crops a side, `anyres_max` budget."""
  candidates = tuple((m.image_size * r, m.image_size * c) for r in range(1, m.anyres_grid + 1)
                     for c in range(1, m.anyres_grid + 1))
  return pipeline.AnyResCrops(crop=m.image_size, grid=m.image_size // m.patch_size,
                              candidates=candidates, anyres_max=m.anyres_max)


def oryx_views(m: ml_collections.ConfigDict) -> pipeline.OryxViews:
  """Oryx's low-resolution (about low_res² pixels) and native (up to image_size²) views."""
  return pipeline.OryxViews(patch=m.patch_size, ratio=m.oryx_ratio,
                            multiple=m.patch_size * max(2, m.oryx_ratio), low_base=m.low_res,
                            max_res=m.image_size, table=m.pos_table, max_aspect=m.max_aspect)


def hd_crops(m: ml_collections.ConfigDict) -> pipeline.HDCrops:
  """XComposer2-4KHD's canvas of at most `hd_num` tiles of `tile` px."""
  return pipeline.HDCrops(tile=m.tile, hd_num=m.hd_num, grid=m.tile // m.patch_size // 2)


def policy(c: ml_collections.ConfigDict) -> Any:
  """The resolution policy (`mmjax.data.pipeline`) the config's tower reads its views from."""
  if c.model.tower == "qwen2vl":
    return pipeline.NativeResolution(patch_size=c.model.patch_size, min_pixels=c.model.min_pixels,
                                     max_patches=c.model.max_patches)
  if c.model.tower == "internvl":
    grid = c.model.tile // c.model.patch_size
    return pipeline.InternVLTiles(tile=c.model.tile, max_num=c.model.max_num,
                                  tokens_per_tile=(grid // 2) ** 2)
  if c.model.tower == "onevision":
    return anyres_crops(c.model)
  if c.model.tower == "xcomposer":
    return hd_crops(c.model)
  if c.model.tower == "oryx":
    return oryx_views(c.model)
  return pipeline.FixedResolution((c.model.image_size,), aspect=c.data.aspect)


def num_image_tokens(config: mllm.MLLMConfig, c: ml_collections.ConfigDict) -> int:
  """Visual tokens per image (for a dynamic-resolution tower: the most an image can get)."""
  if c.model.tower == "qwen2vl":
    return c.model.max_patches // config.tower.vit.merge_size ** 2
  if c.model.tower == "internvl":
    return config.tower.max_tiles * config.tower.tokens_per_tile
  if c.model.tower == "onevision":
    return config.tower.max_tokens
  if c.model.tower in ("xcomposer", "oryx"):
    return config.tower.budget
  return config.tower.num_tokens(c.model.image_size, c.model.image_size)


def formatter(c: ml_collections.ConfigDict, task: str, config: mllm.MLLMConfig,
              tok: tokenizer_lib.Tokenizer) -> pipeline.FormatExample:
  return pipeline.FormatExample(task=task, template=c.data.template, tokenizer=tok,
                                num_image_tokens=num_image_tokens(config, c),
                                max_len=c.data.max_len, policy=policy(c),
                                max_questions=c.data.max_questions, kinds=question_kinds(c))


# `pretrain.kinds` value: the kinds of data.kinds that the tower's input can show (question_kinds).
LEGIBLE = "legible"


def question_kinds(c: ml_collections.ConfigDict, field: str = "data.kinds") -> tuple[str, ...]:
  """The question kinds of `field` as a tuple (empty: every kind): "data.kinds", or
  "pretrain.kinds", which falls back to data.kinds when empty and, when LEGIBLE, keeps the
  coarse ones among data.kinds if the tower sees one view of at most the dataset's low
  resolution (its fine and position content is below legibility there by construction), all of
  them otherwise (a larger or a dynamic view: tiles, crops, native resolution) or when none is
  coarse (e.g. one fine rung, learnt by every tower of an ablation)."""
  if field == "pretrain.kinds" and c.pretrain.kinds == LEGIBLE:
    kinds = _kinds(c.data.kinds, "data.kinds")
    fixed = isinstance(policy(c), pipeline.FixedResolution)
    if not fixed or c.model.image_size > scenes.LOW_RES:
      return kinds
    coarse = tuple(k for k in kinds or questions.ALL_KINDS if k in questions.KINDS["coarse"])
    return coarse or kinds
  text = {"data.kinds": c.data.kinds, "pretrain.kinds": c.pretrain.kinds or c.data.kinds}[field]
  return _kinds(text, field)


def _kinds(text: str, field: str) -> tuple[str, ...]:
  kinds = tuple(k.strip() for k in text.split(",") if k.strip())
  unknown = [k for k in kinds if k not in questions.ALL_KINDS]
  if unknown:
    legible = f"'{LEGIBLE}' or " if field == "pretrain.kinds" else ""
    raise ValueError(f"{field} has unknown question kinds {unknown}; valid: {legible}"
                     f"{', '.join(questions.ALL_KINDS)}.")
  return kinds


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  start: int  # First global step of the stage.
  end: int  # One past its last step.
  task: str
  trainable: str
  lr: float

  @property
  def steps(self) -> int:
    return self.end - self.start


def stages(c: ml_collections.ConfigDict) -> list[Stage]:
  """LLaVA's two stages: alignment (`align_fraction` of the steps), then instruction tuning."""
  t = c.train
  if t.steps < 1:
    raise ValueError(f"train.steps={t.steps} must be positive.")
  if not 0 <= t.align_fraction < 1:
    raise ValueError(f"train.align_fraction={t.align_fraction} must be in [0, 1).")
  split = int(round(t.steps * t.align_fraction))
  out = []
  if split:
    out.append(Stage("align", 0, split, t.align_task, t.align_trainable, t.align_lr))
  out.append(Stage("finetune", split, t.steps, t.task, t.trainable, t.lr))
  return out


def example_batch(fmt: pipeline.FormatExample, source, rows: int) -> dict[str, Any]:
  """A batch of the pipeline's shapes (zeros), for shape inference and initialisation."""
  row = fmt.random_map(source[0], np.random.default_rng(0))
  return {k: np.zeros((rows,) + np.shape(v), np.asarray(v).dtype) for k, v in row.items()}


def initial_params(spec: str, abstract: dict[str, Any],
                   field: str = "train.init_params") -> dict[str, Any] | None:
  """The parameter subtrees `spec` names, read from safetensors files and checked against the
  model's shapes; None when it names none. Every other parameter starts random.

  `spec` (the config's `train.init_params`, or `pretrain.init_params`: `field` names it in
  errors) is "SUBTREE=PATH[#INNER],…": SUBTREE a '/'-path into the parameters (`tower`,
  `tower/vit`, `llm`, …), PATH a file of `mmjax.convert.files.save_params` or a directory holding
  one (`python -m mmjax.convert` output, a tower pre-training run), INNER a '/'-path into that
  file, e.g. `tower/vit=runs/pre#vit`: the ViT of a LLaVA-1.5 tower pre-trained with
  `pretrain_tower`, inside another tower (InternVL's tiles, XComposer's, LLaVA-HR's: a ViT's blocks
  are regrouped to the grouping the model has, `layout.regroup_blocks`).
  """
  out: dict[str, Any] = {}
  for subtree, keys, path in init_params_entries(spec, field):
    node = _descend(abstract, keys, f"{field}: the model has no parameters {subtree!r}",
                    "top level")
    path, _, inner = path.partition("#")
    path = pathlib.Path(path)
    file = path / files.PARAMS_FILE if path.is_dir() else path
    if not file.is_file():
      raise ValueError(f"{field}: no parameter file at {file} (for {subtree!r}).")
    inner_keys = tuple(filter(None, inner.split("/")))
    wanted = mapping.flatten(node) if isinstance(node, dict) else {(): node}
    loaded = layout.regroup_blocks(mapping.flatten(_descend(
        files.load_params(file), inner_keys, f"{field}: {file} holds no {inner!r}",
        "its top level")), wanted)
    missing, unexpected = sorted(set(wanted) - set(loaded)), sorted(set(loaded) - set(wanted))
    shapes = {k: (tuple(loaded[k].shape), tuple(wanted[k].shape)) for k in wanted
              if k in loaded and tuple(loaded[k].shape) != tuple(wanted[k].shape)}
    if missing or shapes:
      raise ValueError(
          f"{field}: {file} does not fit {subtree!r}: missing {_names(missing)}, "
          f"unexpected {_names(unexpected)}, shape (file, model) {dict(list(shapes.items())[:5])}."
          + _stem_hint(missing, unexpected))
    if unexpected:  # E.g. a CLIP's post-norm, which LLaVA-HR's ViT (read between blocks) lacks.
      logging.warning("%s: %s holds parameters %r does not use: %s.", field, file, subtree,
                      _names(unexpected))
    target = out
    for key in keys[:-1]:
      target = target.setdefault(key, {})
    target[keys[-1]] = _nest(node, loaded)
  return out or None


def init_params_entries(spec: str, field: str = "train.init_params"
                        ) -> list[tuple[str, tuple[str, ...], str]]:
  """`spec` ("SUBTREE=PATH[#INNER],…") as (SUBTREE, its '/'-keys, PATH[#INNER]) per entry; a
  malformed entry is a ValueError naming it and `field`."""
  out = []
  for item in filter(None, (x.strip() for x in spec.split(","))):
    subtree, sep, path = item.partition("=")
    if not sep or not subtree or not path:
      raise ValueError(f"{field} entry {item!r} is not SUBTREE=PATH.")
    out.append((subtree, tuple(subtree.strip("/").split("/")), path))
  return out


def _descend(tree: Any, keys: tuple[str, ...], missing: str, top: str) -> Any:
  """`tree`'s node at `keys`; a ValueError starting with `missing` names what the last node
  reached holds."""
  for depth, key in enumerate(keys):
    if not isinstance(tree, dict) or key not in tree:
      have = sorted(tree) if isinstance(tree, dict) else []
      raise ValueError(f"{missing} ({'/'.join(keys[:depth]) or top} holds {have}).")
    tree = tree[key]
  return tree


def _stem_hint(missing: list[tuple[str, ...]], unexpected: list[tuple[str, ...]]) -> str:
  """Advice when a file's ViT embeds patches by another stem than the model's (a converted
  CLIP, linear, into a CPU-size config, whose ViTs have the hMLP stem; or the reverse)."""
  for in_file, in_model, fits in (("patch_kernel", "stem", "patch"),
                                  ("stem", "patch_kernel", "hmlp")):
    if any(in_file in k for k in unexpected) and any(in_model in k for k in missing):
      return f" The file's ViT has the {fits!r} patch stem: set model.vit_stem={fits!r}."
  return ""


def _names(keys: list[tuple[str, ...]]) -> str:
  shown = ["/".join(k) for k in keys[:5]]
  return f"{shown}{' …' if len(keys) > 5 else ''} ({len(keys)})"


def _nest(node: Any, flat: dict[tuple[str, ...], np.ndarray]) -> Any:
  """`flat` (tree paths → arrays) nested as `node`, in `node`'s dtypes."""
  if isinstance(node, dict):
    return {k: _nest(v, {p[1:]: a for p, a in flat.items() if p[0] == k})
            for k, v in node.items()}
  return np.asarray(flat[()], dtype=node.dtype)
