"""LLaVA-format ingestion: a JSON of conversations and its image folder → a TFDS dataset, and a
report that accounts for every record.

  python -m mmjax.data.ingest --json llava_v1_5_mix665k.json --images data/ --out data/llava665k

writes into --out
  llava_json/2.0.0/  the dataset (array_record), opened without TensorFlow by `load(out_dir)`
                     (or `tfds.data_source("llava_json", data_dir=out_dir)` once
                     `mmjax.data.datasets.llava_json` is imported);
  report.json        {"total": M, "accepted": N, "rejected": {reason: count},
                      "first_ids": {reason: [up to 10 ids, in input order]},
                      "first_details": {reason: [why, aligned with first_ids]},
                      "splits": {split: accepted}, "dataset": "llava_json/2.0.0" (None if
                      nothing could be written), "json", "images", "max_pixels", "val_fraction"}
and prints a summary table. Bad records are skipped and counted, never fatal:
accepted + sum(rejected) == total. The checks, reason names and record format are those of
`mmjax.data.datasets.llava_json`. The same input gives the same report and the same records.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

import tensorflow_datasets as tfds

from mmjax import cli
from mmjax import errors
from mmjax import files
from mmjax.data import images
from mmjax.data import records
from mmjax.data.datasets import llava_json

REPORT = "report.json"
DATASET = f"{llava_json.LlavaJson.name}/{llava_json.LlavaJson.VERSION}"  # Inside out_dir.


def ingest(json_path: str | os.PathLike, images_dir: str | os.PathLike,
           out_dir: str | os.PathLike, *, max_pixels: int = images.MAX_PIXELS,
           workers: int | None = None, val_fraction: float = 0.0,
           overwrite: bool = False) -> dict:
  """Builds the dataset in `out_dir` and writes `out_dir/report.json`; returns the report.

  Args:
    json_path: the LLaVA-format JSON (a list of records).
    images_dir: the folder the records' "image" paths are relative to; nothing outside it is read.
    out_dir: where the dataset and report go (created if absent).
    max_pixels: the largest width * height accepted; larger images are rejected as
      "image_too_large" from their header.
    workers: image-decoding processes; default: the CPU count, at most 8.
    val_fraction: the share of records (by id hash) carved into a "validation" split.
    overwrite: replace an earlier ingestion's dataset and report in `out_dir`.

  When a split receives no record (every record rejected, or a val_fraction too small for the
  data) TFDS cannot write it: the report is still complete and written, with "dataset": None.

  Raises:
    llava_json.InputError: the JSON is unreadable or not a list, or `images_dir` is no folder.
    errors.OutputError (a FileExistsError): `out_dir` holds an earlier ingestion and
      `overwrite` is False.
    errors.InputError: `out_dir` is not a writable folder (nor can be created).
    errors.ConfigError (a ValueError): max_pixels or workers below 1, val_fraction outside
      [0, 1).
  """
  out_dir = os.fspath(out_dir)
  # Everything that can fail before the build is checked before an earlier output is removed.
  llava_json.check_options(max_pixels, val_fraction, workers)
  files.output_folder(out_dir, "--out")
  entries = llava_json.read_entries(json_path)
  llava_json.image_root(images_dir)
  outputs = [os.path.join(out_dir, name) for name in (llava_json.LlavaJson.name, REPORT)]
  existing = [path for path in outputs if os.path.lexists(path)]
  if existing and not overwrite:
    raise errors.OutputError(errors.message(
        f"--out {out_dir}", f"already holds an ingestion ({', '.join(existing)})",
        "choose another output folder, or pass --overwrite"))
  for path in existing:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  # Built after the removal: a builder reads an existing dataset's metadata when constructed.
  builder = llava_json.LlavaJson(
      entries=entries, images_dir=images_dir, max_pixels=max_pixels,
      val_fraction=val_fraction, workers=workers, data_dir=out_dir, file_format="array_record")
  dataset = DATASET
  try:
    # Nothing is downloaded, but TFDS makes its download folders anyway: keep them out of out_dir.
    with tempfile.TemporaryDirectory() as downloads:
      builder.download_and_prepare(download_dir=downloads)
  except llava_json.EmptySplitError:
    dataset = None
  report = builder.report.to_dict()
  written = {} if dataset is None else {
      split: info.num_examples for split, info in builder.info.splits.items()}
  if (report["accepted"] + sum(report["rejected"].values()) != report["total"] or
      (dataset is not None and written != report["splits"])):
    raise RuntimeError(f"Ingestion lost track of records: report {report['splits']}, "
                       f"{report['rejected']} of {report['total']}; dataset {written}.")
  report.update(dataset=dataset, json=os.fspath(json_path), images=os.fspath(images_dir),
                max_pixels=max_pixels, val_fraction=val_fraction)
  with open(os.path.join(out_dir, REPORT), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  return report


def load(out_dir: str | os.PathLike) -> dict[str, Sequence[dict]]:
  """The ingested splits ("train", and "validation" if carved) as random-access data sources.

  Each item is a dict of numpy values (see `llava_json`): "image" uint8 (H, W, 3), "has_image",
  "width", "height", and "id" and "conversations" as UTF-8 bytes (json.loads reads the latter).
  """
  path = os.path.join(os.fspath(out_dir), DATASET)
  if not os.path.isdir(path):
    raise errors.InputError(errors.message(
        f"ingested dataset {os.fspath(out_dir)}", f"{path} does not exist",
        "see its report.json, or run python -m mmjax.data.ingest"))
  builder = tfds.builder_from_directory(path)
  records.verify(builder)
  return dict(builder.as_data_source())


def summary(report: dict) -> str:
  """A short table: totals, then each rejection reason's count and share, largest first."""
  total = report["total"]

  def share(n: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"

  splits = ", ".join(f"{split} {n}" for split, n in report["splits"].items())
  lines = [f"{report['accepted']} of {total} records accepted ({share(report['accepted'])})"
           + (f": {splits}" if splits else "")]
  if report["rejected"]:
    width = max(len("reason"), *map(len, report["rejected"]))
    lines.append(f"  {'reason':<{width}}  {'count':>7}  {'share':>6}")
    for reason, n in sorted(report["rejected"].items(), key=lambda item: (-item[1], item[0])):
      lines.append(f"  {reason:<{width}}  {n:>7}  {share(n):>6}")
  return "\n".join(lines)


def _positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is below 1")
  return value


def _fraction(text: str) -> float:
  value = float(text)
  if not 0 <= value < 1:
    raise argparse.ArgumentTypeError(f"{value} is outside [0, 1)")
  return value


def _main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", required=True, help="LLaVA-format JSON file.")
  parser.add_argument("--images", required=True, help="Folder the image paths are relative to.")
  parser.add_argument("--out", required=True, help="Output folder: dataset and report.json.")
  parser.add_argument("--max_pixels", type=_positive, default=images.MAX_PIXELS,
                      help="Largest width * height accepted.")
  parser.add_argument("--workers", type=_positive, default=None,
                      help="Image-decoding processes (default: CPU count, at most 8).")
  parser.add_argument("--val_fraction", type=_fraction, default=0.0,
                      help="Share of records, in [0, 1), carved by id hash into a validation "
                      "split.")
  parser.add_argument("--overwrite", action="store_true",
                      help="Replace an earlier ingestion in --out.")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  report = ingest(args.json, args.images, args.out, max_pixels=args.max_pixels,
                  workers=args.workers, val_fraction=args.val_fraction,
                  overwrite=args.overwrite)
  print(summary(report))
  print(f"{time.perf_counter() - start:.1f} s; report: {os.path.join(args.out, REPORT)}")
  if report["dataset"] is None:
    wanted = ["train"] + ["validation"] * bool(args.val_fraction)
    empty = [split for split in wanted if split not in report["splits"]]
    print(f"error: no dataset written — no record was accepted into {', '.join(empty)}; see "
          f"the report's rejection reasons", file=sys.stderr)
    return 1
  print(f"dataset: {os.path.join(args.out, report['dataset'])}")
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
