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
from mmjax.models import connectors
from mmjax.models import decoders
from mmjax.models import mllm
from mmjax.models import towers


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


def _common(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The settings every network of the model shares (`c.model`'s dtypes, scan, remat and
  attention)."""
  m = c.model
  return dict(scan_layers=m.scan_layers, remat=m.remat, dtype=m.dtype, param_dtype=m.param_dtype,
              attention_impl=m.attention_impl)


def model_config(c: ml_collections.ConfigDict, vocab_size: int) -> mllm.MLLMConfig:
  """The MLLM `c.model` describes: its tower (`c.model.tower.name`, `mmjax.models.towers`), its
  connector (`c.model.connector.name`, `mmjax.models.connectors`) and its decoder
  (`c.model.llm.name`, `mmjax.models.decoders`); `vocab_size` is the tokenizer's."""
  m, common = c.model, _common(c)
  decoder = decoders.from_config(m.llm, common, vocab_size)
  if decoder.vocab_size < vocab_size:
    raise ValueError(f"model.llm.vocab_size={decoder.vocab_size} is smaller than the "
                     f"tokenizer's {vocab_size}.")
  return mllm.MLLMConfig(tower=towers.from_config(m.tower, common, decoder.width), llm=decoder,
                         connector=connectors.from_config(m.connector),
                         image_token_id=tokenizer_lib.IMAGE_ID,
                         max_images=int(c.data.get("max_images", 1)))


def max_len(c: ml_collections.ConfigDict, config: mllm.MLLMConfig) -> int:
  """Tokens per row: `data.max_len`, or when 0 the text room `data.text_len` plus the most
  visual tokens an image gives the model."""
  return c.data.max_len or c.data.text_len + config.max_visual_tokens


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


def policy(c: ml_collections.ConfigDict, config: mllm.MLLMConfig | None = None) -> Any:
  """The resolution policy (`mmjax.data.pipeline`) the model's tower reads its views from."""
  config = config or model_config(c, vocab_size=1)  # The policy ignores the vocabulary.
  return config.tower.policy(c.data.aspect)


def formatter(c: ml_collections.ConfigDict, task: str, config: mllm.MLLMConfig,
              tok: tokenizer_lib.Tokenizer) -> pipeline.FormatExample:
  return pipeline.FormatExample(task=task, template=c.data.template, tokenizer=tok,
                                num_image_tokens=config.image_visual_tokens,
                                visual_tokens=config.connector.num_tokens,
                                max_len=max_len(c, config), policy=policy(c, config),
                                max_questions=c.data.max_questions, kinds=question_kinds(c),
                                max_images=config.max_images)


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
    view = policy(c)
    fixed = isinstance(view, pipeline.FixedResolution)
    if not fixed or max(view.sizes) > scenes.LOW_RES:
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
  """LLaVA's two stages: alignment (`align_fraction` of the steps), then instruction tuning;
  none when `train.steps` is 0 and stage 0 (`pretrain.steps`) runs alone."""
  t = c.train
  if t.steps == 0 and c.pretrain.steps > 0:
    return []
  if t.steps < 1:
    raise ValueError(f"train.steps={t.steps} must be positive (or 0 with pretrain.steps > 0: "
                     "the tower's stage 0 alone).")
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
  errors) is "PATH" (a whole model: a converted whole checkpoint, `python -m mmjax.convert`
  output of e.g. a LlavaForConditionalGeneration, whose parameters must fit the config's model)
  or "SUBTREE=PATH[#INNER],…": SUBTREE a '/'-path into the parameters (`tower`,
  `tower/vit`, `llm`, …), PATH a file of `mmjax.convert.files.save_params` or a directory holding
  one (`python -m mmjax.convert` output, a tower pre-training run), INNER a '/'-path into that
  file, e.g. `tower/vit=runs/pre/tower#vit`: the ViT of a LLaVA-1.5 tower pre-trained by stage
  0 (`pretrain_tower`), inside another tower (InternVL's tiles, XComposer's, LLaVA-HR's: a ViT's blocks
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
    if not keys:  # The whole model.
      return _nest(node, loaded)
    target = out
    for key in keys[:-1]:
      target = target.setdefault(key, {})
    target[keys[-1]] = _nest(node, loaded)
  return out or None


def init_params_entries(spec: str, field: str = "train.init_params"
                        ) -> list[tuple[str, tuple[str, ...], str]]:
  """`spec` ("PATH", or "SUBTREE=PATH[#INNER],…") as (SUBTREE, its '/'-keys, PATH[#INNER]) per
  entry (a whole model: SUBTREE "", keys ()); a malformed entry is a ValueError naming it and
  `field`."""
  out = []
  items = list(filter(None, (x.strip() for x in spec.split(","))))
  for item in items:
    subtree, sep, path = item.partition("=")
    if not sep and len(items) == 1 and pathlib.Path(item).exists():  # A whole model's.
      out.append(("", (), item))
      continue
    if not sep or not subtree or not path:
      raise ValueError(f"{field} entry {item!r} is not SUBTREE=PATH, nor an existing whole "
                       "model's PATH standing alone.")
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
      return (f" The file's ViT has the {fits!r} patch stem: set its ViT block's stem={fits!r} "
              "(e.g. model.tower.vit.stem).")
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
