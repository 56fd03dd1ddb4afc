"""Questions and dense captions about a `Scene`, in three families.

* fine: needs a high-resolution view — the difficulty ladder over figures hidden in fine checks
  on a grey panel and a digit hidden the same way on a grey card: pattern_colours (which pair of
  colours the figures' checks are) → pattern_count (how many figures) → pattern_shape (what
  shape they are) → pattern_code (which digit the card hides); at 224 px all of it is grey;
* coarse: answerable from a thumbnail (background colour, texture, orientation, number and
  colours of the large shapes);
* position: where a detail is, on a 3×3 grid of regions.
Each kind has several phrasings; answers are short words, compared after `normalize_answer`.
"""
import dataclasses
import re

import numpy as np

from mmjax.data.datasets import scenes
from mmjax.data.datasets.scenes import Scene

FAMILIES = ("fine", "coarse", "position")
KINDS = {
    "fine": ("pattern_colours", "pattern_count", "pattern_shape", "pattern_code"),
    "coarse": ("background_colour", "texture", "orientation", "shape_count", "shape_colour"),
    "position": ("box_position", "mark_position"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
ALL_KINDS = tuple(k for family in FAMILIES for k in KINDS[family])
# The words that pick a question's target (its colour, shape or region), for classifier heads.
TARGET_WORDS = tuple(dict.fromkeys(scenes.COLOURS) | dict.fromkeys(scenes.MARK_SHAPES)
                     | dict.fromkeys(scenes.FIGURE_SHAPES)
                     | dict.fromkeys(scenes.SHAPES) | dict.fromkeys(scenes.REGIONS))


@dataclasses.dataclass(frozen=True)
class QA:
  family: str
  kind: str
  question: str
  answer: str


def normalize_answer(text: str) -> str:
  """Lower case, words only, number words as digits: 'Two.' and '2' compare equal."""
  words = re.findall(r"[a-z0-9]+", text.lower())
  return " ".join(str(NUMBERS.index(w)) if w in NUMBERS else w for w in words)


def condition(kind: str, question: str) -> np.ndarray:
  """A question as a classifier sees it: multi-hot [len(ALL_KINDS) + len(TARGET_WORDS)] of its
  kind and the target words it contains (at most one region, the longest that matches)."""
  vec = np.zeros(len(ALL_KINDS) + len(TARGET_WORDS), np.float32)
  vec[ALL_KINDS.index(kind)] = 1
  text = question.lower()
  for region in sorted(scenes.REGIONS, key=len, reverse=True):  # "top left" before "top".
    if re.search(rf"\b{region}\b", text):
      vec[len(ALL_KINDS) + TARGET_WORDS.index(region)] = 1
      text = text.replace(region, " ")
      break
  for word in TARGET_WORDS:
    if word not in scenes.REGIONS and re.search(rf"\b{word}\b", text):
      vec[len(ALL_KINDS) + TARGET_WORDS.index(word)] = 1
  return vec


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
  return options[int(rng.integers(len(options)))]


def _plural(shape: str) -> str:
  return shape + ("es" if shape.endswith("s") else "s")


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
  """Every kind of question the scene supports, one phrasing each (chosen by `rng`)."""
  out: list[QA] = []
  w, h = scene.width, scene.height
  marks, boxes, shapes = scene.of_kind("mark"), scene.of_kind("box"), scene.of_kind("shape")
  figures = scene.of_kind("figure")
  if figures:  # The figures of a panel share their pair and shape.
    out.append(QA("fine", "pattern_colours", _pick(rng, (
        "What two colours make up the fine checks on the grey panel?",
        "Which two colours are the figures on the grey panel checkered in?",
        "The finely checkered figures on the grey panel: which colours are they made of?")),
        figures[0].colour))
    out.append(QA("fine", "pattern_shape", _pick(rng, (
        "What shape is drawn in fine checks on the grey panel?",
        "The grey panel hides finely checkered figures: what shape are they?",
        "Which shape do the finely checkered figures on the grey panel have?")),
        figures[0].shape))
    out.append(QA("fine", "pattern_count", _pick(rng, (
        "How many finely checkered figures does the grey panel hold?",
        "Count the figures drawn in fine checks on the grey panel.",
        "What is the number of finely checkered figures on the grey panel?")), str(len(figures))))
  for card in scene.of_kind("card"):
    out.append(QA("fine", "pattern_code", _pick(rng, (
        "What digit is written in fine checks on the grey card?",
        "Read the finely checkered digit on the grey card.",
        "Which digit does the grey card show in fine checks?")), card.code))
  if len(marks) == 1:
    colour, shape = marks[0].colour, marks[0].shape
    out.append(QA("position", "mark_position", _pick(rng, (
        f"Where is the small {colour} {shape}?",
        f"In which part of the image is the tiny {colour} {shape}?")),
        marks[0].region(w, h)))
  if boxes:
    box = boxes[int(rng.integers(len(boxes)))]
    out.append(QA("position", "box_position", _pick(rng, (
        f"Where is the {box.colour} box?",
        f"In which part of the image is the box with the {box.colour} border?")),
        box.region(w, h)))
  out.append(QA("coarse", "background_colour", _pick(rng, (
      "What colour is the background?", "What is the dominant colour of the image?",
      "Which colour fills most of the picture?")), scene.background))
  out.append(QA("coarse", "texture", _pick(rng, (
      "What pattern does the background have?", "Describe the background texture in one word.",
      "Which texture covers the background?")), scene.texture))
  out.append(QA("coarse", "orientation", _pick(rng, (
      "Is the image landscape, portrait or square?", "What is the orientation of the image?")),
      scene.orientation))
  out.append(QA("coarse", "shape_count", _pick(rng, (
      "How many large shapes are there?", "Count the big shapes in the image.")),
      str(len(shapes))))
  if shapes:  # Large shapes differ in kind, so each is named by it.
    shape = shapes[int(rng.integers(len(shapes)))]
    out.append(QA("coarse", "shape_colour", _pick(rng, (
        f"What colour is the large {shape.shape}?", f"Which colour is the big {shape.shape}?")),
        shape.colour))
  return out


def _a(word: str) -> str:
  return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _listing(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene) -> str:
  """A dense caption describing every object, for the alignment stage."""
  w, h = scene.width, scene.height
  parts = [f"{_a(scene.orientation).capitalize()} image with {_a(scene.background)} "
           f"{scene.texture} background."]
  shapes = scene.of_kind("shape")
  if shapes:
    parts.append(f"{NUMBERS[len(shapes)].capitalize()} large shape{'s' * (len(shapes) != 1)}: " +
                 _listing([f"{_a(s.colour)} {s.shape} at the {s.region(w, h)}" for s in shapes]) +
                 ".")
  else:
    parts.append("No large shapes.")
  figures = scene.of_kind("figure")
  for panel in scene.of_kind("panel"):
    shape = figures[0].shape if len(figures) == 1 else _plural(figures[0].shape)
    parts.append(f"A grey panel at the {panel.region(w, h)} hides {NUMBERS[len(figures)]} "
                 f"{shape} in fine {panel.colour} checks.")
  for card in scene.of_kind("card"):
    parts.append(f"A grey card at the {card.region(w, h)} hides the digit {card.code} in fine "
                 f"{card.colour} checks.")
  for box in scene.of_kind("box"):
    parts.append(f"{_a(box.colour).capitalize()} box at the {box.region(w, h)} reads {box.code}.")
  marks = scene.of_kind("mark")
  if marks:
    shape = marks[0].shape if len(marks) == 1 else _plural(marks[0].shape)
    parts.append(f"{NUMBERS[len(marks)].capitalize()} small {marks[0].colour} {shape} at the "
                 f"{_listing([m.region(w, h) for m in marks])}.")
  return " ".join(parts)
