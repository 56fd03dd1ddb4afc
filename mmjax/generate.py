"""Answers a prompt about images with a converted checkpoint, streaming the answer to stdout.

  python -m mmjax.generate --checkpoint DIR --image cat.jpg --prompt "What is in the picture?"

DIR is a `python -m mmjax.convert --hf` output, which holds the model and its processor files
(tokenizer, chat template, image processor). The prompt is the user's message, wrapped by the
checkpoint's chat template with the assistant's turn opened, and each image goes before it as the
template places images; `--raw` passes the text as it is, with one `<image>` marker (the
checkpoint's image token) per `--image`. A prompt may hold several images: a native-resolution
model (Qwen2-VL) packs them into one row of patches, each at its own size; the others encode each
image as its own row of the tower (`MLLMConfig.max_images`), except LLaVA-OneVision, whose
processor reads several images as one square view each. The answer is printed as it is
generated, and nothing else goes to stdout (logs and progress go to stderr), so the output can be
compared and piped: it is transformers' `decode(generated, skip_special_tokens=True)` followed by
a newline.

  python -m mmjax.generate --workdir RUN --image cat.jpg --prompt "What is in the picture?"

answers with a `train.py` run's newest checkpoint instead, with the run's own tokenizer, chat
template and image policy (its config.json): the prompt its VQA evaluation would ask.

  python -m mmjax.generate --checkpoint DIR --input records.jsonl --output answers.jsonl

answers many records in batches (`--batch_size`) with a progress bar on stderr. A record is
{"id": …, "prompt": …, "image": PATH or [PATH, …], "raw": false} (image paths relative to the
input file's folder; ids unique; no "id": "line N"); each output line is {"id", "answer"}, or
{"id", "error"} for a record that cannot be answered (a missing or unreadable image, a prompt over
the context, image markers that do not match the images), which the run reports and goes past.
Re-running the same command resumes: records whose id the output already holds are not redone,
and a last line cut short by a kill is replaced.
"""
import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tqdm

from mmjax import cli
from mmjax import errors
from mmjax import files
from mmjax.convert import hf
from mmjax.data import hf_processor
from mmjax.data import images as images_lib
from mmjax.data import patches as patches_lib
from mmjax.models import mllm

# What a tower reads (its INPUTS) → how generate builds it from the processor's outputs.
FIXED, NATIVE = ("images",), ("patches", "patch_positions", "patch_segments")
ANYRES = ("crops", "anyres_index", "anyres_weight", "anyres_kind")
TILES = ("tiles",)  # And "tile_mask", which says how many tokens a row holds.
SMALLEST_PATCH_ROW = 64  # Native rows are padded to a power of two patches from here.


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mmjax.generate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint",
                      help="A converted checkpoint folder (python -m mmjax.convert --hf … --out).")
  parser.add_argument("--workdir", help="A train.py run folder: its newest checkpoint, with the "
                                        "run's tokenizer, template and image policy.")
  parser.add_argument("--image", action="append", default=[],
                      help="An image file; repeat for several (the model's limit applies).")
  parser.add_argument("--prompt", help="The user's message.")
  parser.add_argument("--input", help="A JSONL file of records to answer (instead of --prompt).")
  parser.add_argument("--output", help="With --input: the JSONL file of answers (resumed).")
  parser.add_argument("--batch_size", type=int, default=8, help="With --input: records a batch.")
  parser.add_argument("--raw", action="store_true",
                      help="Use --prompt as the model's whole input text, without the chat "
                           "template; it holds one image marker per --image.")
  parser.add_argument("--max_new_tokens", type=int, default=256)
  parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default).")
  parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus mass; 1: off.")
  parser.add_argument("--top_k", type=int, default=0, help="0: off.")
  parser.add_argument("--seed", type=int, default=0, help="The sampling key's seed.")
  return parser


class _Stream:
  """Writes the decoded answer as tokens arrive. Decoding a prefix of the tokens need not give a
  prefix of the final text (a half-decoded UTF-8 character, a space that clean-up removes), so
  only the text before the last whitespace, and never a replacement character, is written until
  the end; `finish` writes the rest, so the whole output is exactly the final decode."""

  def __init__(self, server: "Server", out=None):
    self.server, self.eos_ids, self.out = server, tuple(server.eos_token_ids), out or sys.stdout
    self.ids: list[int] = []
    self.shown = ""
    self.stopped = False

  def __call__(self, step: Any, tokens: np.ndarray) -> None:
    del step
    if self.stopped:
      return
    token = int(np.asarray(tokens)[0])
    self.ids.append(token)
    self.stopped = token in self.eos_ids
    text = self.server.decode(self.ids)
    cut = max(text.rfind(" "), text.rfind("\n"))
    safe = text[:cut] if cut > 0 else ""
    if "\ufffd" not in safe[len(self.shown):] and safe.startswith(self.shown):
      self.out.write(safe[len(self.shown):])
      self.out.flush()
      self.shown = safe

  def finish(self, tokens: np.ndarray) -> str:
    """Writes what is left of the answer `tokens` (the loop's output, the same tokens)."""
    text = self.server.decode(tokens)
    if not text.startswith(self.shown):  # Cannot happen with the rule above; never silently.
      raise RuntimeError(f"streamed text {self.shown!r} is not a prefix of the answer {text!r}")
    self.out.write(text[len(self.shown):] + "\n")
    self.out.flush()
    return text


def _check_model(config: Any, directory: str) -> None:
  if not isinstance(config, mllm.MLLMConfig):
    raise errors.InputError(errors.message(
        f"--checkpoint {directory}", f"holds a {type(config).__name__}, not a whole multimodal "
        "model", "convert a whole checkpoint (e.g. LlavaForConditionalGeneration)"))


@dataclasses.dataclass(frozen=True)
class Row:
  """One prompt ready to answer: its token ids [L], its images' views (for a tower of one image
  a row: one dict per image; for a native tower: the image processor's outputs, or None) with
  the visual tokens of each, and, for an M-RoPE model, its positions [L, 3]."""
  ids: np.ndarray
  images: Any = None
  image_tokens: tuple[int, ...] = ()
  positions: np.ndarray | None = None


class Server:
  """A converted whole checkpoint ready to answer: its model, processor and sampling settings."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    with errors.expected(f"--checkpoint {args.checkpoint}"):
      self.config, self.params, arch = hf.load(args.checkpoint, "--checkpoint")
      _check_model(self.config, args.checkpoint)
      # The Hugging Face model type decides how transformers loads the tokenizer.
      model_type = hf.converter(arch).config_to_hf(self.config, arch)["model_type"]
      self.processor = hf_processor.Processor(args.checkpoint, model_type)
    self.inputs = tuple(self.config.tower.INPUTS)
    if self.inputs not in (FIXED, NATIVE, ANYRES, TILES):
      raise errors.InputError(errors.message(
          f"--checkpoint {args.checkpoint}", f"holds a {arch}, whose tower reads "
          f"{list(self.inputs)}: generate serves towers of one fixed-size view (LLaVA-1.5), "
          "AnyRes crops (LLaVA-NeXT, OneVision), tiles (InternVL) or native-resolution patches "
          "(Qwen2-VL) so far"))
    if (self.processor.image is not None
        and self.processor.image_token_id != self.config.image_token_id):
      raise errors.InputError(errors.message(
          f"--checkpoint {args.checkpoint}", f"its tokenizer's image token "
          f"{self.processor.image_token!r} is id {self.processor.image_token_id}, the model's "
          f"{self.config.image_token_id}"))
    if self.inputs == NATIVE and self.processor.image is not None:
      vit, image = self.config.tower.vit, self.processor.image
      for field in ("patch_size", "merge_size", "temporal_patch_size"):
        if getattr(image, field, None) != getattr(vit, field):
          raise errors.InputError(errors.message(
              f"--checkpoint {args.checkpoint}", f"its image processor's {field} is "
              f"{getattr(image, field, None)}, the model's {getattr(vit, field)}"))

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    return self.processor.eos_token_ids

  def decode(self, ids: Sequence[int]) -> str:
    """The answer's text: transformers' `decode(ids, skip_special_tokens=True)`."""
    return self.processor.decode(ids)

  def _blank(self) -> dict[str, np.ndarray]:
    """The views of no image (rows with fewer images than the batch's most)."""
    return self.config.tower.policy("squash" if self.inputs == FIXED else "").blank()

  def _views(self, rows: Sequence[Row]) -> tuple[mllm.MLLMConfig, dict[str, np.ndarray]]:
    return self._native_views(rows) if self.inputs == NATIVE else self._row_views(rows)

  def _image_views(self, inputs: dict[str, np.ndarray], what: str) -> list[dict[str, np.ndarray]]:
    """The tower's views of each image of a prompt, from the image processor's outputs; an
    `InputError` where the processor's output does not fit the tower."""
    tower, ckpt = self.config.tower, f"--checkpoint {self.args.checkpoint}"
    pixels = inputs["pixel_values"]
    if self.inputs == FIXED:
      if pixels.shape[1:3] != (tower.image_size,) * 2:
        raise errors.InputError(errors.message(
            ckpt, f"its image processor gives {pixels.shape[1]}×{pixels.shape[2]} pixels, the "
            f"model's tower reads {tower.image_size}×{tower.image_size}"))
      return [{"images": x} for x in pixels]
    if self.inputs == ANYRES:
      policy = tower.policy("")
      if pixels.shape[2] != policy.crop:
        raise errors.InputError(errors.message(
            ckpt, f"its image processor gives crops of {pixels.shape[2]} px, the model's tower "
            f"reads {policy.crop}"))
      return [policy.views(x, int(h), int(w)) for x, (h, w) in zip(pixels, inputs["image_sizes"])]
    views, start = [], 0
    for n in inputs["num_patches"]:
      n = int(n)
      if n > tower.max_tiles or pixels.shape[1] != tower.tile:
        raise errors.InputError(errors.message(
            what, f"an image is {n} tiles of {pixels.shape[1]} px at the processor's settings, "
            f"the model's tower reads up to {tower.max_tiles} of {tower.tile} px "
            "(tower.max_num)", "give a smaller image, or convert with a larger tower.max_num"))
      tiles = np.zeros((tower.max_tiles, tower.tile, tower.tile, 3), np.float32)
      tiles[:n] = pixels[start:start + n]
      views.append({"tiles": tiles, "tile_mask": (np.arange(tower.max_tiles) < n).astype(np.int32)})
      start += n
    return views

  def encode(self, prompt: str, image_paths: Sequence[str], raw: bool, record: Any = None
             ) -> Row:
    """The prompt's `Row`; an `InputError` naming the flag, or the `record`, that cannot be
    answered."""
    images_what, prompt_what = (("--image", "--prompt") if record is None
                                else (f"record {record!r}",) * 2)
    pictures = [images_lib.load_image(path) for path in image_paths]
    if len(pictures) > 1 and getattr(self.processor.image, "square_several", False):
      raise errors.InputError(errors.message(
          f"{len(pictures)} images of {images_what}" if record is not None
          else f"{len(pictures)} --image", "this checkpoint's processor reads several images of "
          "a prompt as one square view each, which its AnyRes tower does not take in mmjax",
          "give one image"))
    if raw:
      text = prompt
    else:
      content = [{"type": "image"}] * len(pictures) + [{"type": "text", "text": prompt}]
      with errors.expected(f"--checkpoint {self.args.checkpoint}'s chat template"):
        text = self.processor.apply_chat_template([{"role": "user", "content": content}])
    with errors.expected(prompt_what):
      inputs = self.processor(text, pictures)
    ids, config = inputs.pop("input_ids"), self.config
    positions = inputs.pop("position_ids", None)
    images, tokens = None, ()
    if pictures and self.inputs == NATIVE:
      patches = len(inputs["pixel_values"])
      if patches > config.tower.max_patches:
        raise errors.InputError(errors.message(
            images_what, f"{'are' if len(pictures) > 1 else 'is'} {patches} patches at the "
            f"processor's size, over the model's budget of {config.tower.max_patches} "
            "(tower.max_patches)", "give fewer or smaller images"))
      images = inputs
    elif pictures:
      images = self._image_views(inputs, images_what)
      tokens = tuple(int(config.image_tokens({k: v[None] for k, v in view.items()})[0])
                     for view in images)
      written = int(np.sum(ids == config.image_token_id))
      if written != sum(tokens):
        raise errors.InputError(errors.message(
            f"--checkpoint {self.args.checkpoint}", f"its processor writes {written} image "
            f"tokens for {len(pictures)} image(s), the model gives {sum(tokens)} visual tokens"))
    context = config.llm.max_positions
    if context and len(ids) >= context:
      raise errors.InputError(errors.message(
          prompt_what, f"is {len(ids)} tokens with its images, "
          f"the model's context is {context}", "shorten the prompt"))
    return Row(ids, images, tokens, None if positions is None else np.asarray(positions).T)

  def limit(self, ids: np.ndarray) -> int:
    """New tokens for a prompt of `ids`: --max_new_tokens, or fewer where the context ends."""
    context = self.config.llm.max_positions
    return min(self.args.max_new_tokens, context - len(ids)) if context else \
        self.args.max_new_tokens

  def _row_views(self, rows: Sequence[Row]) -> tuple[mllm.MLLMConfig, dict[str, np.ndarray]]:
    """The batch's views for a tower of one image a row: [B, …] when no row has more than one
    image, else [B, N, …] with each row's `image_tokens` [B, N] and the config's `max_images`
    set to N (blank views where a row has fewer)."""
    blank = self._blank()
    # A run trained with several images a row keeps its image axis for a single image.
    most = max([len(row.images or ()) for row in rows] + [self.config.max_images])
    if most <= 1:
      views = [row.images[0] if row.images else blank for row in rows]
      return self.config, {k: np.stack([v[k] for v in views]) for k in blank}
    config = dataclasses.replace(self.config, max_images=most)
    views = [list(row.images or ()) + [blank] * (most - len(row.images or ())) for row in rows]
    out = {k: np.stack([np.stack([v[k] for v in row]) for row in views]) for k in blank}
    out["image_tokens"] = np.asarray([list(row.image_tokens) + [0] * (most - len(row.image_tokens))
                                      for row in rows], np.int32)
    return config, out

  def _native_views(self, rows: Sequence[Row]) -> tuple[mllm.MLLMConfig, dict[str, np.ndarray]]:
    """Each row's images packed into one row of patches (segments keep them apart), padded to a
    power of two so batches of similar images share one compiled program; the tower's
    `max_patches` set to that length."""
    merge = self.config.tower.vit.merge_size
    natives = []
    for row in rows:
      images, start = [], 0
      for t, h, w in (row.images["image_grid_thw"] if row.images else ()):
        n = int(t * h * w)
        images.append(patches_lib.NativeImage(row.images["pixel_values"][start:start + n],
                                              patches_lib.vision_positions(int(h), int(w), merge),
                                              (int(h), int(w))))
        start += n
      natives.append(images)
    need = max(sum(im.num_tokens for im in images) for images in natives)
    length = min(max(SMALLEST_PATCH_ROW, 1 << max(need - 1, 0).bit_length()),
                 self.config.tower.max_patches)
    packed = [patches_lib.pack(images, length) if images else None for images in natives]
    dim = next(p["patches"].shape[1] for p in packed if p is not None)
    empty = {"patches": np.zeros((length, dim), np.float32),
             "positions": np.zeros((length, 2), np.int32),
             "segment_ids": np.zeros((length,), np.int32)}
    packed = [p if p is not None else empty for p in packed]
    config = dataclasses.replace(self.config, tower=dataclasses.replace(self.config.tower,
                                                                        max_patches=length))
    return config, {"patches": np.stack([p["patches"] for p in packed]),
                    "patch_positions": np.stack([p["positions"] for p in packed]),
                    "patch_segments": np.stack([p["segment_ids"] for p in packed])}

  def answer(self, rows: Sequence[Row], on_tokens: Any = None) -> list[np.ndarray]:
    """Each row's answer tokens (up to its EOS or its `limit`), generated in one batch."""
    import jax  # Here: importing jax starts its runtime, after the arguments are checked.
    from mmjax import sampling
    config, views = self.config, None
    if any(row.images is not None for row in rows):
      config, views = self._views(rows)
    limits = [self.limit(row.ids) for row in rows]
    positions = None if rows[0].positions is None else [row.positions for row in rows]
    args = self.args
    with errors.expected("sampling"):
      tokens, lengths = sampling.generate(
          mllm.MLLM(config), {"params": self.params}, [row.ids for row in rows], views,
          max_new_tokens=max(limits), eos_id=self.eos_token_ids, pad_id=0,
          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
          rng=jax.random.key(args.seed), positions=positions, on_tokens=on_tokens)
    return [t[:min(n, limit)] for t, n, limit in zip(tokens, lengths, limits)]


def _tuples(value: Any) -> Any:
  """A config read back from JSON with its lists as the tuples the configs hold."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class RunServer(Server):
  """A `train.py` run's newest checkpoint ready to answer, with the run's own input processing:
  its config (`WORKDIR/config.json`), tokenizer, chat template (`data.template`) and image policy
  — the prompts its VQA evaluation asks, on one device."""

  def __init__(self, args: argparse.Namespace):
    import ml_collections
    from mmjax import evaluation  # Here: they import jax, after the arguments are checked.
    from mmjax.training import build
    from mmjax.training import loop
    from mmjax.training import step as step_lib
    from mmjax.training import validate
    self.args = args
    workdir = pathlib.Path(args.workdir)
    with errors.expected(f"--workdir {workdir}"):
      validate.workdir(workdir, must_exist=True)
      saved = validate.saved_config(workdir)
      if saved is None:
        raise errors.InputError(errors.message(
            f"--workdir {workdir}", f"has no {validate.CONFIG_FILE}", "give a train.py run"))
      c = ml_collections.ConfigDict(_tuples(saved))
      c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1  # Whole parameters on each device.
      self.tok = build.tokenizer(c)
      self.config = build.model_config(c, self.tok.vocab_size)
      self.policy = build.policy(c, self.config)
      self.template = c.data.template
      fmt = build.formatter(c, c.train.task, self.config, self.tok)
      spec = step_lib.model_batch(build.example_batch(fmt, build.data_source(c, "train"), 1))
      self.step, params = evaluation._restore(c, workdir, mllm.MLLM(self.config), spec,
                                              loop.mesh_from_config(c), None)
    import jax
    self.params = jax.device_get(params)  # Answered on one device, as a converted checkpoint.
    self.inputs = tuple(self.config.tower.INPUTS)
    print(f"answering with step {self.step} of {workdir}", file=sys.stderr)

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    return (self.tok.eos_id,)

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids])

  def _blank(self) -> dict[str, np.ndarray]:
    return self.policy.blank()

  def _views(self, rows: Sequence[Row]) -> tuple[mllm.MLLMConfig, dict[str, np.ndarray]]:
    return self._row_views(rows)  # The policy's views: each image its own row, any tower.

  def encode(self, prompt: str, image_paths: Sequence[str], raw: bool, record: Any = None
             ) -> Row:
    """The run's prompt for one question: `<image>` tags (one per image, first, as its VQA
    evaluation places them; `raw`: as the prompt places them) and the text, rendered by the
    run's template with the assistant's turn opened; each image through the run's policy."""
    from mmjax.data import mrope
    from mmjax.data import pipeline
    from mmjax.data import tokenizer as tokenizer_lib
    images_what, prompt_what = (("--image", "--prompt") if record is None
                                else (f"record {record!r}",) * 2)
    pictures = [images_lib.load_image(path) for path in image_paths]
    with errors.expected(images_what):
      try:
        views = [self.policy(picture) for picture in pictures]
      except pipeline.ImageRefused as e:
        raise ValueError(f"the run's image policy refuses it: {e}") from None
    tokens = [int(self.config.image_tokens({k: v[None] for k, v in view.items()})[0])
              for view in views]
    text = prompt if raw else "".join(tokenizer_lib.IMAGE_TAG + "\n" for _ in pictures) + prompt
    with errors.expected(prompt_what):
      ids = tokenizer_lib.encode_prompt(
          self.template, [{"from": "human", "value": text}], self.tok, num_images=len(pictures),
          num_image_tokens=tokens, max_images=max(len(pictures), 1))
    positions = None
    if self.policy.mrope:
      types = (ids == self.tok.image_id).astype(np.int32).tolist()
      grids = [tuple(int(g) for g in view["image_grid"]) for view in views]
      positions = mrope.mrope_positions(types, grids, self.policy.merge_size)[0].T
    return Row(np.asarray(ids, np.int32), views or None, tuple(tokens), positions)


def _one(server: Server, args: argparse.Namespace) -> None:
  row = server.encode(args.prompt, args.image, args.raw)
  limit = server.limit(row.ids)
  if limit < args.max_new_tokens:
    print(f"generating {limit} tokens: the context ({server.config.llm.max_positions}) ends "
          "there", file=sys.stderr)
  stream = _Stream(server)
  stream.finish(server.answer([row], on_tokens=stream)[0])


def _records(path: pathlib.Path) -> Iterator[tuple[Any, dict[str, Any] | None, str | None]]:
  """(id, record, None), or (id, None, why) for a line that is not a record; a line without an
  id is "line N"."""
  files.regular_file(path, "--input")
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        yield f"line {number}", None, f"not JSON ({e.msg})"
        continue
      if not isinstance(record, dict):
        yield f"line {number}", None, "not a JSON object"
        continue
      rid = record.get("id", f"line {number}")
      prompt, images = record.get("prompt"), record.get("image", [])
      images = [images] if isinstance(images, str) else images
      if not isinstance(prompt, str) or not (isinstance(images, list)
                                             and all(isinstance(x, str) for x in images)):
        yield rid, None, "needs a string 'prompt' and 'image' as a path or a list of paths"
        continue
      yield rid, {**record, "image": [str(path.parent / x) for x in images]}, None


def _done(path: pathlib.Path) -> list[dict[str, Any]]:
  """The complete lines of an earlier run's output (a last line cut by a kill is left out)."""
  if not path.exists():
    return []
  files.regular_file(path, "--output")
  done = []
  for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
    try:
      value = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
      value = None
    if not isinstance(value, dict) or "id" not in value:
      break
    done.append(value)
  return done


def _many(server: Server, args: argparse.Namespace) -> None:
  source, out = pathlib.Path(args.input), pathlib.Path(args.output)
  if out.resolve() == source.resolve():
    raise errors.OutputError(errors.message(f"--output {out}", "is the --input file"))
  records = list(_records(source))
  seen: dict[str, int] = {}
  for index, (rid, _, _) in enumerate(records):
    if seen.setdefault(json.dumps(rid), index) != index:
      raise errors.InputError(errors.message(
          f"--input {source}", f"id {rid!r} belongs to two records (numbers "
          f"{seen[json.dumps(rid)] + 1} and {index + 1})", "give each record its own id: the output and its "
          "resumption go by id"))
  done = _done(out)
  finished = {json.dumps(r["id"]) for r in done}
  todo = [r for r in records if json.dumps(r[0]) not in finished]
  if done:
    print(f"resuming: {len(done)} of {len(records)} records answered already", file=sys.stderr)
  # Rewritten with the complete lines only, so a line cut short by a kill is not kept.
  with out.open("w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in done)
  failed = 0
  with out.open("a", encoding="utf-8") as f, tqdm.tqdm(
      total=len(todo), desc="answering", unit="record", file=sys.stderr, leave=False) as bar:
    for start in range(0, len(todo), args.batch_size):
      batch, results, rows = todo[start:start + args.batch_size], {}, []
      for rid, record, why in batch:
        if record is not None:
          try:
            rows.append((rid, server.encode(record["prompt"], record["image"],
                                            bool(record.get("raw")), rid)))
          except errors.Error as e:
            why = str(e)
        if why is not None:
          results[json.dumps(rid)] = {"id": rid, "error": why}
      if rows:
        answers = server.answer([row for _, row in rows])
        for (rid, _), tokens in zip(rows, answers):
          results[json.dumps(rid)] = {"id": rid, "answer": server.decode(tokens)}
      for rid, _, _ in batch:
        f.write(json.dumps(results[json.dumps(rid)], ensure_ascii=False) + "\n")
      f.flush()
      failed += sum("error" in r for r in results.values())
      bar.update(len(batch))
  print(f"answered {len(todo) - failed} records, {failed} with an error, into {out}",
        file=sys.stderr)


def _main(argv: list[str]) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if (args.prompt is None) == (args.input is None):
    parser.error("give --prompt (one answer) or --input FILE --output FILE (many).")
  if (args.checkpoint is None) == (args.workdir is None):
    parser.error("give --checkpoint DIR (a converted model) or --workdir RUN (a train.py run).")
  if args.input is not None and (args.output is None or args.image or args.raw):
    parser.error("--input takes --output, and its records give their images and raw flags.")
  for flag in ("max_new_tokens", "batch_size"):
    if getattr(args, flag) < 1:
      raise errors.ConfigError(errors.message(f"--{flag} {getattr(args, flag)}",
                                              "must be at least 1"))
  server = RunServer(args) if args.workdir is not None else Server(args)
  if args.input is None:
    _one(server, args)
  else:
    _many(server, args)
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
