"""The embedded fine-detail dataset: determinism, disjoint splits, and details illegible at 224 px."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from mmjax import config_args
from mmjax.data.datasets import finedetail
from mmjax.data.datasets import questions
from mmjax.data.datasets import scenes

TINY = finedetail.CONFIGS["tiny"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  builder = finedetail.prepare("tiny", str(tmp_path_factory.mktemp("tfds")))
  return builder.as_data_source()


def test_same_seed_gives_the_same_bytes():
  for split in finedetail.SPLITS:
    a, b = finedetail.example(TINY, split, 5), finedetail.example(TINY, split, 5)
    assert a[1]["image"].getvalue() == b[1]["image"].getvalue()
    assert a[1]["qa"] == b[1]["qa"] and a[1]["caption"] == b[1]["caption"]
  other = finedetail.example(TINY, "train", 6)[1]["image"].getvalue()
  assert other != finedetail.example(TINY, "train", 5)[1]["image"].getvalue()


def test_prepared_dataset_reads_back_without_tensorflow(sources):
  assert {k: len(v) for k, v in sources.items()} == dict(zip(finedetail.SPLITS, TINY.sizes))
  record = sources["train"][3]  # TFDS stores examples in the order of their key hashes.
  index = int(record["id"].decode().split("-")[1])
  _, expected = finedetail.example(TINY, "train", index)
  np.testing.assert_array_equal(record["image"], np.asarray(Image.open(expected["image"])))
  assert record["image"].shape == (record["height"], record["width"], 3)
  assert [q.decode() for q in record["qa"]["answer"]] == [q["answer"] for q in expected["qa"]]


def test_splits_share_no_image_question_pair(sources):
  seen = {}
  for split, source in sources.items():
    for i in range(len(source)):
      record = source[i]
      digest = hash(record["image"].tobytes())
      for question in record["qa"]["question"]:
        assert seen.setdefault((digest, question), split) == split


def test_details_are_below_legibility_at_224_and_legible_at_full_size():
  for i in range(30):
    _, scene = scenes.render(np.random.default_rng(i), scenes.SceneSpec())
    long_side = max(scene.width, scene.height)
    assert scene.detail_px * scenes.LOW_RES / long_side < scenes.LEGIBLE_PX
    assert scene.detail_px >= 6.0
  with pytest.raises(ValueError, match="detail_frac"):
    scenes.SceneSpec(detail_frac=0.02)


def _downscaled(image, scene, thing, long_side, trim=2):
  """A thing's pixels (a `trim` px border trimmed) after resizing the long side to `long_side`
  the way the input pipeline does (PIL bicubic)."""
  scale = long_side / max(scene.width, scene.height)
  size = (round(scene.width * scale), round(scene.height * scale))
  pixels = np.asarray(image.resize(size, Image.BICUBIC)).astype(int)
  x0, y0, x1, y1 = (round(v * scale) for v in thing.box)
  return pixels[y0 + trim:y1 - trim, x0 + trim:x1 - trim]


def _chroma(pixels):
  return pixels.max(axis=-1) - pixels.min(axis=-1)


@pytest.fixture(scope="module")
def rendered():
  return [scenes.render(np.random.default_rng(i), scenes.SceneSpec()) for i in range(40)]


def test_hidden_figures_and_digits_are_plain_grey_at_224_and_drawn_at_448(rendered):
  """The panel and the card are one grey at 224 px within a few levels, their edges included,
  whatever they hide (so no fine question has an answer there); at full size the checks stand
  out inside the figures and are absent away from them, and at 448 px the digit's still show."""
  answers = {"colours": set(), "shape": set(), "count": set(), "code": set()}
  drawn = {"panel": 0, "card": 0}
  for i, (image, scene) in enumerate(rendered):
    figures, panels, cards = (scene.of_kind(k) for k in ("figure", "panel", "card"))
    assert len(panels) <= 1 and len(cards) <= 1 and bool(figures) == bool(panels), i
    for thing in panels + cards:
      drawn[thing.kind] += 1
      low = _downscaled(image, scene, thing, scenes.LOW_RES)
      assert np.abs(low - 127.5).max() <= 12, (i, thing.kind, np.abs(low - 127.5).max())
    for card in cards:
      answers["code"].add(card.code)
      assert (_chroma(_downscaled(image, scene, card, 448)) > 50).mean() > 0.1, i
    if not panels:  # No room left in the scene: its panel questions are not asked.
      continue
    answers["colours"].add(figures[0].colour)
    answers["shape"].add(figures[0].shape)
    answers["count"].add(len(figures))
    panel = panels[0]
    chroma = _chroma(np.asarray(image).astype(int)[panel.box[1]:panel.box[3],
                                                   panel.box[0]:panel.box[2]])
    inside, near = np.zeros(chroma.shape, bool), np.zeros(chroma.shape, bool)
    # The checks fade out within a few periods of a figure's edge.
    fade = int(3 * scenes.SceneSpec().pattern_frac * max(scene.width, scene.height))
    for f in figures:
      x0, y0, x1, y1 = (v - o for v, o in zip(f.box, panel.box[:2] * 2))
      # The middle fifth of a figure's box is inside every shape, away from its edges.
      inside[y0 + 2 * (y1 - y0) // 5:y1 - 2 * (y1 - y0) // 5,
             x0 + 2 * (x1 - x0) // 5:x1 - 2 * (x1 - x0) // 5] = 1
      near[max(y0 - fade, 0):y1 + fade, max(x0 - fade, 0):x1 + fade] = 1
    assert chroma[inside].mean() > 60, (i, chroma[inside].mean())
    assert chroma[~near].max() <= 2, (i, chroma[~near].max())
  assert min(drawn.values()) >= 0.8 * len(rendered), drawn
  assert answers == {"colours": set(scenes.PATTERN_PAIRS), "shape": set(scenes.FIGURE_SHAPES),
                     "count": {1, 2, 3}, "code": set(scenes.CODE_ALPHABET)}, answers
  with pytest.raises(ValueError, match="pattern_frac"):
    scenes.SceneSpec(pattern_frac=4 / 448)
  with pytest.raises(ValueError, match="figure_frac"):
    scenes.SceneSpec(figure_frac=0.13)
  with pytest.raises(ValueError, match="num_figures"):
    scenes.SceneSpec(num_figures=(1, 5))


def test_drawn_glyphs_have_the_recorded_height():
  """The ink inside each box (the code) is as high as `detail_px` says, within a pixel."""
  for i in range(10):
    image, scene = scenes.render(np.random.default_rng(i), scenes.SceneSpec())
    pixels = np.asarray(image)
    for box in scene.of_kind("box"):
      x0, y0, x1, y1 = box.box
      ink = np.where((pixels[y0:y1, x0:x1] < 128).all(axis=-1).any(axis=1))[0]
      assert abs((ink.max() - ink.min() + 1) - scene.detail_px) <= 1.5


def test_questions_cover_every_family_with_correct_answers():
  image, scene = scenes.render(np.random.default_rng(3), scenes.SceneSpec())
  qas = questions.questions(scene, np.random.default_rng(0))
  assert {q.family for q in qas} == set(questions.FAMILIES)
  by_kind = {q.kind: q for q in qas}
  assert by_kind["background_colour"].answer == scene.background
  assert by_kind["pattern_count"].answer == str(len(scene.of_kind("figure")))
  assert by_kind["pattern_shape"].answer == scene.of_kind("figure")[0].shape
  assert by_kind["pattern_code"].answer == scene.of_kind("card")[0].code
  regions = {b.colour: b.region(scene.width, scene.height) for b in scene.of_kind("box")}
  box_q = by_kind["box_position"]
  assert box_q.answer == regions[next(c for c in regions if c in box_q.question)]
  assert by_kind["pattern_colours"].answer == scene.of_kind("panel")[0].colour
  assert questions.normalize_answer(" Two. ") == questions.normalize_answer("2") == "2"


def test_marks_share_a_shape_have_equal_ink_and_contrast_with_the_background():
  """A blurred mark's brightness must not give its shape away (a caption and mark_position name
  it), and marks must stand out from the background (so a high-resolution view finds them)."""
  areas = {}
  for i in range(40):
    image, scene = scenes.render(np.random.default_rng(i), scenes.SceneSpec())
    marks = scene.of_kind("mark")
    assert len({(m.shape, m.colour) for m in marks}) == 1
    assert np.linalg.norm(np.subtract(scenes.COLOURS[marks[0].colour],
                                      scenes.BACKGROUNDS[scene.background])) >= 120
    shapes = scene.of_kind("shape")
    assert len({s.shape for s in shapes}) == len({s.colour for s in shapes}) == len(shapes)
    pixels = np.asarray(image).astype(int)
    for m in marks:
      x0, y0, x1, y1 = m.box
      ink = (np.abs(pixels[y0:y1, x0:x1] - scenes.COLOURS[m.colour]).sum(-1) == 0).sum()
      areas.setdefault(m.shape, []).append(ink / scene.detail_px ** 2)
  means = {k: np.mean(v) for k, v in areas.items()}
  assert set(means) == set(scenes.MARK_SHAPES)
  assert max(means.values()) / min(means.values()) < 1.15, means


def test_hidden_figures_cover_one_area_whatever_their_shape():
  """Counting the figures by the area of their checks must not depend on their shape."""
  size, areas = 80, {}
  for shape in scenes.FIGURE_SHAPES:
    mask, boxes = scenes._figures_mask(np.random.default_rng(0), 200,
                                       round(size * scenes.EXTENT[shape]), shape, 3)
    assert len(boxes) == 3
    areas[shape] = np.asarray(mask, np.float64).sum() / 255 / scenes.SS ** 2 / 3 / size ** 2
  assert max(areas.values()) / min(areas.values()) < 1.1, areas


def test_unknown_config_is_rejected(tmp_path):
  with pytest.raises(ValueError,
                     match="fine-detail config 'medium' — unknown; valid: large, small, tiny"):
    finedetail.prepare("medium", str(tmp_path))


def test_pixel_aspect_bounds_the_drawn_sizes_and_oryx_covers_it():
  """Whole-pixel sizes go a little past max_aspect; Oryx's static budget must hold them all."""
  spec = finedetail.CONFIGS["small"].scene
  rng = np.random.default_rng(0)
  aspects = [max(w, h) / min(w, h) for w, h in (scenes._size(rng, spec) for _ in range(20000))]
  assert max(aspects) <= spec.pixel_aspect
  # The small train split holds an 862×287 image (3.0035): Oryx's pre-training once refused it.
  assert spec.max_aspect < 862 / 287 <= spec.pixel_aspect
  oryx = config_args.get_config(
      pathlib.Path(__file__).resolve().parents[1] / "configs" / "oryx.py")
  assert all(c.scene.pixel_aspect <= oryx.model.tower.max_aspect
             for c in finedetail.CONFIGS.values())
