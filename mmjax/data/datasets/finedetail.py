"""The embedded fine-detail VQA dataset: a TFDS builder (array_record, no TensorFlow).

Images are procedural scenes (`scenes.py`) with questions in three families (`questions.py`) and
a dense caption; everything is generated locally and deterministically from the config's seed.
Each example holds one image, its caption and every question the scene supports, so training can
form multi-turn conversations and evaluation can ask one question at a time.

  python -m mmjax.data.datasets.finedetail --config small --data_dir ~/tensorflow_datasets
"""
import argparse
import contextlib
import dataclasses
import io
import multiprocessing
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mmjax import cli
from mmjax import console
from mmjax import errors
from mmjax import files
from mmjax.data import records
from mmjax.data.datasets import questions
from mmjax.data.datasets import scenes

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class FineDetailConfig(tfds.core.BuilderConfig):
  sizes: tuple[int, int, int] = (4000, 400, 400)  # Images in train / validation / test.
  scene: scenes.SceneSpec = scenes.SceneSpec()
  seed: int = 0  # Root of every example's random stream.


CONFIGS = {
    "tiny": FineDetailConfig(name="tiny", description="For tests: a few small images.",
                             sizes=(48, 16, 16), scene=scenes.SceneSpec(long_side=(512, 640))),
    "small": FineDetailConfig(name="small", description="The default: minutes on a 2-core CPU.",
                              sizes=(4000, 400, 400)),
    "large": FineDetailConfig(name="large", description="For longer runs.",
                              sizes=(40000, 2000, 2000)),
}


def example_rng(config: FineDetailConfig, split: str, index: int) -> np.random.Generator:
  """The random stream example `index` of `split` is drawn from: its scene, then its questions'
  phrasings (a scene redrawn elsewhere, e.g. for a probe, starts from it)."""
  return np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS.index(split), index]))


def example(config: FineDetailConfig, split: str, index: int) -> tuple[str, dict]:
  """(key, features) of example `index` of `split`; a pure function of its arguments."""
  rng = example_rng(config, split, index)
  image, scene = scenes.render(rng, config.scene)
  buffer = io.BytesIO()
  image.save(buffer, format="png", compress_level=1)  # Fast; PNG keeps the glyphs lossless.
  buffer.seek(0)
  key = f"{split}-{index:06d}"
  return key, {
      "id": key,
      "image": buffer,
      "width": scene.width,
      "height": scene.height,
      "detail_px": scene.detail_px,
      "caption": questions.caption(scene),
      "qa": [dataclasses.asdict(q) for q in questions.questions(scene, rng)],
  }


def _example_star(args):
  return example(*args)


class FineDetail(tfds.core.GeneratorBasedBuilder):
  """Procedural scenes with fine-detail, coarse and position questions."""
  VERSION = tfds.core.Version("4.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "2.0.0": "Learnable ladder: one mark shape per scene at equal ink area, marks contrasting "
               "with the background, distinct large shapes, less clutter.",
      "3.0.0": "First rung of the ladder: a large square checkered in two complementary colours "
               "at a period only a high-resolution view holds (pattern_colours).",
      "4.0.0": "The ladder as content hidden in those checks on grey, plain grey at 224 px: "
               "1-3 figures of one shape on a grey panel (pattern_colours: their pair; "
               "pattern_count; pattern_shape) and a digit on a grey card (pattern_code). The "
               "checkered square, mark_shape, mark_count and box_code retired (a probe reads "
               "marks and codes at 224 px once told where they are).",
  }
  BUILDER_CONFIGS = list(CONFIGS.values())
  DEFAULT_CONFIG_NAME = "small"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "width": np.int32,
            "height": np.int32,
            "detail_px": np.float32,
            "caption": tfds.features.Text(),
            "qa": tfds.features.Sequence({
                "family": tfds.features.Text(),
                "kind": tfds.features.Text(),
                "question": tfds.features.Text(),
                "answer": tfds.features.Text(),
            }),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split, n)
            for split, n in zip(SPLITS, self.builder_config.sizes)}

  def _generate_examples(self, split: str, n: int):
    jobs = [(self.builder_config, split, i) for i in range(n)]
    workers = min(os.cpu_count() or 1, 8)
    if workers == 1 or n < 64:
      yield from map(_example_star, jobs)
      return
    # Spawned workers: the parent may already hold JAX's threads, which fork would copy unsafely.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      yield from pool.imap(_example_star, jobs, chunksize=16)


def prepare(config: str = "small", data_dir: str | None = None) -> FineDetail:
  """Generates the dataset if it is not already in `data_dir`; returns the builder."""
  if config not in CONFIGS:
    raise errors.ConfigError(errors.message(f"fine-detail config {config!r}", "unknown",
                                            f"valid: {', '.join(sorted(CONFIGS))}"))
  builder = FineDetail(config=config, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    console.say("Generating the embedded dataset fine_detail/%s (%s) in %s …", config,
                ", ".join(f"{n} {split}" for split, n in zip(SPLITS, CONFIGS[config].sizes)),
                builder.data_dir)
    # TFDS announces a download of "Unknown size" and draws bars per split and shard: its words
    # go to the log, ours above say what happens.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), _no_progress_bars():
      builder.download_and_prepare()
    for line in filter(None, printed.getvalue().splitlines()):
      logging.info("tfds: %s", line)
  records.verify(builder)
  return builder


@contextlib.contextmanager
def _no_progress_bars():
  tfds.disable_progress_bar()
  try:
    yield
  finally:
    tfds.enable_progress_bar()


def _main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="small", choices=sorted(CONFIGS))
  parser.add_argument("--data_dir", default=None, help="TFDS data directory.")
  args = parser.parse_args(argv)
  if args.data_dir is not None:
    files.output_folder(args.data_dir, "--data_dir")
  builder = prepare(args.config, args.data_dir)
  print(f"{builder.info.full_name} in {builder.data_dir}: "
        + ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
        + " (record files verified)")
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
