"""LLaVA-format JSON plus an image folder → a TFDS dataset (array_record, no TensorFlow).

The input is LLaVA's list of records,
  [{"id": "000001", "image": "coco/train2017/000001.jpg",
    "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"},
                      {"from": "gpt", "value": "A cat."}, ...]}, ...],
multi-turn, with text-only records (no "image", or "image": null) and records of several images
("image": ["a.jpg", "b.jpg", …], as many `<image>` tags placed anywhere in the human turns: the
LLaVA-OneVision / LLaVA-NeXT-Interleave format) allowed. Every record is either
written to the dataset or rejected with exactly one reason from `REASONS`: the first check below
that it fails. Nothing else stops the build, so accepted + rejected == total always holds.

  1. malformed: the entry is not an object, or has no usable id (a non-empty str, or an int,
     taken as its decimal text; valid Unicode).
  2. duplicate_id: an earlier entry has the same id. Every entry with a usable id claims it,
     accepted or not, so which record survives is decided before any image is read.
  3. malformed: "image" is not a non-empty path string, nor a non-empty list of them (nor absent
     / null), "conversations" is absent or not a list, a turn is not {"from": str, "value": str};
     too_many_images: more than `MAX_IMAGES` images.
  4. The conversation, by `mmjax.data.tokenizer` (its `ConversationError.reason`): empty,
     bad_role, bad_turn_order, empty_question, empty_answer, invalid_text, image_in_answer,
     too_many_images (more than `MAX_IMAGES` `<image>` tags), tag_without_image (more `<image>`
     tags than images), image_without_tag (fewer).
  5. image_outside_root: the path is absolute, or resolves (through ".." or a symlink) outside the
     image folder. Checked just before reading, so no file outside the folder is opened (unless
     the folder is changed during the build, which can race the check).
  6. image_<reason> for the `reason` of `mmjax.data.images.ImageError` (image_missing,
     image_corrupt, image_too_large, ...), for the first of its images that fails.

Each accepted record stores:
  id: the record's id (the example key; ids are unique).
  image: the RGB uint8 pixels `load_image` returned (EXIF rotation applied, CMYK / 16-bit /
    palette converted), re-encoded as PNG, so training never decodes an original file; a 1x1
    `images.BACKGROUND` placeholder for a text-only record.
  extra_images: the record's second and later images, each stored as `image` (empty for one).
  has_image: False exactly for text-only records.
  width, height: the stored (first) image's size (1, 1 for the placeholder).
  conversations: the turns as JSON text, [{"from": ..., "value": ...}, ...], roles and values as
    given (other keys of a turn are dropped); `json.loads` reads it from the stored bytes.

Images are decoded in spawned worker processes (from 64 images on); the result does not depend
on their number: records are handled in input order and TFDS orders the examples by key. With
`val_fraction`, a record goes to "validation" when the SHA-256 of its id, read as a fraction of
2**64, is below it, so a record keeps its split when the JSON grows. `mmjax.data.ingest` is the
command line and writes the report.
"""
import bisect
import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmjax import errors
from mmjax import files
from mmjax.data import images
from mmjax.data import tokenizer

REASONS = (("malformed", "duplicate_id") +
           tuple(r for r in tokenizer.REASONS if r != "malformed") +
           ("image_outside_root",) + tuple(f"image_{r}" for r in images.REASONS))

FIRST_IDS = 10  # Ids kept per reason in the report.

# Any multi-round template validates a conversation the same way; "plain" would also reject
# multi-turn and text-only records. One token per image: only the checks matter here.
_CHECK_TEMPLATE = "vicuna_v1"
_CHECK_TOKENIZER = tokenizer.ByteTokenizer()

MAX_IMAGES = 16  # Images a record may hold; a row's own budget is the config's data.max_images.

# Spawning workers costs about a second each (they import TFDS); below this many images the
# build decodes in-process.
_MIN_POOL_JOBS = 64


class InputError(errors.InputError):
  """The JSON file or image folder as a whole is unusable (no record can be judged)."""


class RecordError(ValueError):
  """A rejected record: `reason` (one of `REASONS`) is what the report counts, `detail` says why."""

  def __init__(self, reason: str, detail: str):
    if reason not in REASONS:
      raise ValueError(f"Unknown rejection reason {reason!r}; valid: {list(REASONS)}.")
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail

  def __reduce__(self):  # Pickles across worker processes despite the two-argument constructor.
    return RecordError, (self.reason, self.detail)


@dataclasses.dataclass(frozen=True)
class Record:
  """An entry that passed checks 1-4 (everything but its image file)."""
  id: str
  images: tuple[str, ...]  # Paths relative to the image folder; (): text-only.
  conversations: str  # The turns as JSON text.


def check_options(max_pixels: int, val_fraction: float, workers: int | None) -> None:
  """`errors.ConfigError` (a ValueError) naming the option out of range."""
  for name, value, bad, requirement in (
      ("max_pixels", max_pixels, max_pixels < 1, "at least 1"),
      ("val_fraction", val_fraction, not 0 <= val_fraction < 1, "in [0, 1)"),
      ("workers", workers, workers is not None and workers < 1,
       "at least 1 (or None: the CPU count)")):
    if bad:
      raise errors.ConfigError(errors.message(f"{name}={value}", f"must be {requirement}"))


def read_entries(json_path: str | os.PathLike) -> list:
  """The JSON file's list of entries; InputError if the file is unreadable or not a JSON list."""
  path = os.fspath(json_path)
  try:
    entries = files.read_json(path, "LLaVA JSON")
  except errors.InputError as e:
    raise InputError(str(e)) from None
  if not isinstance(entries, list):
    raise InputError(errors.message(f"LLaVA JSON {path}", f"holds a {type(entries).__name__}",
                                    "expected a list of records"))
  if not entries:
    raise InputError(errors.message(f"LLaVA JSON {path}", "holds no records"))
  return entries


def usable_id(entry: Any) -> str | None:
  """The entry's id as text, or None if it has no usable one (check 1)."""
  value = entry.get("id") if isinstance(entry, dict) else None
  # bool is an int subclass, but True is no id.
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    return None
  text = str(value)
  return text if text and _is_unicode(text) else None


def check_entry(entry: Any, index: int, seen: set[str]) -> Record:
  """Checks 1-4 of entry `index` (no file is read); adds its id to `seen`.

  Raises:
    RecordError: the first failing check's reason.
  """
  record_id = usable_id(entry)
  if record_id is None:
    if not isinstance(entry, dict):
      what = f"a {type(entry).__name__}, not an object"
    elif "id" in entry:
      what = f"id {entry['id']!r:.80} is neither a non-empty str of valid Unicode nor an int"
    else:
      what = "no id"
    raise RecordError("malformed", f"entry {index}: {what}")
  if record_id in seen:
    raise RecordError("duplicate_id", f"entry {index}: id {record_id!r} is used by an earlier "
                      "entry")
  seen.add(record_id)
  image = entry.get("image")
  paths = [] if image is None else image if isinstance(image, list) else [image]
  if not all(_is_path(x) for x in paths) or (isinstance(image, list) and not image):
    raise RecordError("malformed", f"image {image!r:.80} is not a non-empty relative path string "
                      "nor a non-empty list of them")
  if len(paths) > MAX_IMAGES:
    raise RecordError("too_many_images", f"{len(paths)} images, at most {MAX_IMAGES}")
  turns = entry.get("conversations")
  if not isinstance(turns, list):
    raise RecordError("malformed", f"conversations is a {type(turns).__name__}, not a list")
  try:
    tokenizer.encode_conversation(_CHECK_TEMPLATE, turns, _CHECK_TOKENIZER,
                                  num_images=len(paths), num_image_tokens=1,
                                  max_images=MAX_IMAGES)
  except tokenizer.ConversationError as e:
    raise RecordError(e.reason, e.message) from None
  text = json.dumps([{"from": t["from"], "value": t["value"]} for t in turns], ensure_ascii=False)
  return Record(id=record_id, images=tuple(paths), conversations=text)


def _is_unicode(text: str) -> bool:
  """Whether `text` has a UTF-8 encoding (json.loads accepts lone surrogates, TFDS does not)."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def _is_path(value: Any) -> bool:
  if not isinstance(value, str) or not value or "\0" in value:  # A NUL breaks every OS call.
    return False
  try:
    os.fsencode(value)
  except UnicodeEncodeError:  # A lone surrogate outside the surrogateescape range.
    return False
  return True


def image_root(images_dir: str | os.PathLike) -> str:
  """The image folder's real path (symlinks resolved); InputError if it is not a directory."""
  root = os.path.realpath(images_dir)
  if not os.path.isdir(root):
    raise InputError(errors.message(f"image folder {os.fspath(images_dir)}",
                                    "not a folder" if os.path.exists(root) else "no such folder",
                                    "give --images the folder the records' paths start in"))
  return root


def split_of(record_id: str, val_fraction: float) -> str:
  """"validation" if the id's hash falls below `val_fraction`, else "train"."""
  digest = hashlib.sha256(record_id.encode("utf-8")).digest()
  return "validation" if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else "train"


def resolve(root: str, relative: str) -> str:
  """The real path `relative` names inside `root` (itself a real path), following symlinks.

  Raises:
    RecordError("image_outside_root"): absolute, or resolving outside `root`.
  """
  if os.path.isabs(relative):
    raise RecordError("image_outside_root", f"{relative!r} is an absolute path")
  path = os.path.realpath(os.path.join(root, relative))
  if os.path.commonpath((root, path)) != root:
    raise RecordError("image_outside_root", f"{relative!r} resolves outside the image folder")
  return path


def encode_png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  # Level 1: on photos, a third of level 6's encoding time for files 6-10% larger.
  Image.fromarray(pixels).save(buffer, format="png", compress_level=1)
  return buffer.getvalue()


_PLACEHOLDER = np.full((1, 1, 3), images.BACKGROUND, np.uint8)
_PLACEHOLDER_PNG = encode_png(_PLACEHOLDER)


def load_record_image(job: tuple[str, str, int]) -> tuple[bytes, int, int] | RecordError:
  """(PNG bytes, width, height) of job (root, relative path, max_pixels), or the RecordError.

  Checks 5-6; returns the error rather than raising it, so a pool carries on to the next job.
  """
  root, relative, max_pixels = job
  try:
    pixels = images.load_image(resolve(root, relative), max_pixels, name=relative)
  except RecordError as e:
    return e
  except images.ImageError as e:
    return RecordError(f"image_{e.reason}", e.detail)
  return encode_png(pixels), pixels.shape[1], pixels.shape[0]


class Report:
  """Counts of accepted records per split and of rejected ones per reason, and the first
  `FIRST_IDS` rejected ids per reason in input order (whatever order they are added in)."""

  def __init__(self, total: int):
    self.total = total
    self.accepted: collections.Counter[str] = collections.Counter()  # Split → records.
    self.rejected: collections.Counter[str] = collections.Counter()  # Reason → records.
    self._first: dict[str, list[tuple[int, str, str]]] = collections.defaultdict(list)

  def accept(self, split: str) -> None:
    self.accepted[split] += 1

  def reject(self, index: int, record_id: str, error: RecordError) -> None:
    self.rejected[error.reason] += 1
    first = self._first[error.reason]
    bisect.insort(first, (index, record_id, error.detail))
    del first[FIRST_IDS:]

  def to_dict(self) -> dict:
    """{"total", "accepted", "rejected": {reason: n}, "first_ids": {reason: [id, ...]},
    "first_details": {reason: [why, ...]} (aligned with first_ids), "splits": {split: n}}."""
    reasons = sorted(self.rejected)
    return {
        "total": self.total,
        "accepted": sum(self.accepted.values()),
        "rejected": {r: self.rejected[r] for r in reasons},
        "first_ids": {r: [i for _, i, _ in self._first[r]] for r in reasons},
        "first_details": {r: [d for _, _, d in self._first[r]] for r in reasons},
        "splits": dict(sorted(self.accepted.items())),
    }


class EmptySplitError(ValueError):
  """A split received no accepted record (TFDS cannot write an empty split); the report is
  complete when this is raised."""


@dataclasses.dataclass(frozen=True)
class _Planned:
  """An entry's split and, after checks 1-4, its Record or rejection."""
  split: str
  index: int
  id: str  # For the report: the usable id, or "#<index>".
  outcome: Record | RecordError


class LlavaJson(tfds.core.GeneratorBasedBuilder):
  """A LLaVA-format JSON and its image folder; `report` holds the counts after a build."""
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "2.0.0": "Records of several images (extra_images)."}

  def __init__(self, *, entries: list | None = None, images_dir: str | os.PathLike | None = None,
               max_pixels: int = images.MAX_PIXELS, val_fraction: float = 0.0,
               workers: int | None = None, **kwargs):
    """The sources are needed to build (`download_and_prepare`), not to read a built dataset.

    Args:
      entries: the LLaVA-format JSON's list (`read_entries`), read by the caller so that a bad
        file fails before TFDS makes any folder.
      images_dir: the folder the "image" paths are relative to; nothing outside it is read.
      max_pixels: the largest width * height accepted (see `images.load_image`).
      val_fraction: the share of records, by id hash, in a "validation" split; 0: "train" only.
      workers: decoding processes; default: the CPU count, at most 8.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, file_format, ...).
    """
    check_options(max_pixels, val_fraction, workers)
    super().__init__(**kwargs)
    self._entries, self._images_dir = entries, images_dir
    self._max_pixels, self._val_fraction = max_pixels, val_fraction
    self._workers = workers or min(os.cpu_count() or 1, 8)
    self.report: Report | None = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "extra_images": tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 3), encoding_format="png")),
            "has_image": np.bool_,
            "width": np.int32,
            "height": np.int32,
            "conversations": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    if self._entries is None or self._images_dir is None:
      raise ValueError("LlavaJson needs entries and images_dir to build a dataset.")
    root = image_root(self._images_dir)
    self.report = Report(len(self._entries))
    seen = set()
    plan = collections.defaultdict(list)
    for index, entry in enumerate(self._entries):
      try:
        outcome = check_entry(entry, index, seen)
      except RecordError as e:
        outcome = e
      record_id = usable_id(entry) or f"#{index}"
      split = split_of(record_id, self._val_fraction)
      plan[split].append(_Planned(split, index, record_id, outcome))
    splits = ("train", "validation") if self._val_fraction else ("train",)
    return {split: self._generate_examples(root, plan, splits[n:])
            for n, split in enumerate(splits)}

  def _generate_examples(self, root: str, plan: dict[str, list[_Planned]], splits: tuple[str, ...]):
    """Yields the accepted records of split splits[0]. If there are none, it judges the records of
    the later splits too (TFDS stops before their turn; the report must count them), then raises
    EmptySplitError."""
    accepted = 0
    for planned, result in self._judge(root, plan[splits[0]]):
      if self._count(planned, result):
        accepted += 1
        yield planned.id, result
    if not accepted:
      for split in splits[1:]:
        for planned, result in self._judge(root, plan[split]):
          self._count(planned, result)
      raise EmptySplitError(f"No record was accepted into split {splits[0]!r}; the report "
                            "says why.")

  def _count(self, planned: _Planned, result: dict | RecordError) -> bool:
    """Adds the outcome to the report; whether the record was accepted."""
    if isinstance(result, RecordError):
      self.report.reject(planned.index, planned.id, result)
      return False
    self.report.accept(planned.split)
    return True

  def _judge(self, root: str, plan: list[_Planned]
             ) -> Iterator[tuple[_Planned, dict | RecordError]]:
    """(planned, example or RecordError) for each of `plan`, in order."""
    jobs = [(root, path, self._max_pixels) for p in plan if isinstance(p.outcome, Record)
            for path in p.outcome.images]
    with _ordered_map(load_record_image, jobs, self._workers) as loaded:
      for planned in plan:
        record = planned.outcome
        if isinstance(record, RecordError):
          yield planned, record
          continue
        pictures = [next(loaded) for _ in record.images] or [(_PLACEHOLDER_PNG, 1, 1)]
        failed = next((x for x in pictures if isinstance(x, RecordError)), None)
        if failed is not None:
          yield planned, failed
          continue
        (png, width, height), extra = pictures[0], [x[0] for x in pictures[1:]]
        yield planned, {"id": record.id, "image": png, "extra_images": extra,
                        "has_image": bool(record.images), "width": width, "height": height,
                        "conversations": record.conversations}


@contextlib.contextmanager
def _ordered_map(fn, jobs: list, workers: int) -> Iterator[Iterator]:
  """`map(fn, jobs)`, in a spawned pool of `workers` processes when there are enough jobs to pay
  for starting it; the results come in job order either way."""
  if workers == 1 or len(jobs) < _MIN_POOL_JOBS:
    yield map(fn, jobs)
    return
  # Spawned workers: the parent may already hold JAX's threads, which fork would copy unsafely.
  with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
    yield pool.imap(fn, jobs, chunksize=8)
