"""Questions and dense captions about a `Scene`, in three families.

* fine: needs the small details (box codes, mark shapes, mark counts) — the difficulty ladder
  mark_shape → mark_count → box_code;
* coarse: answerable from a thumbnail (background colour, texture, orientation, number and
  colours of the large shapes);
* position: where a detail is, on a 3×3 grid of regions.
Each kind has several phrasings; answers are short words, compared after `normalize_answer`.
"""
import dataclasses
import re

import numpy as np

from mmjax.data.datasets.scenes import Scene

FAMILIES = ("fine", "coarse", "position")
KINDS = {
    "fine": ("mark_shape", "mark_count", "box_code"),
    "coarse": ("background_colour", "texture", "orientation", "shape_count", "shape_colour"),
    "position": ("box_position", "mark_position"),
}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")


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


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
  return options[int(rng.integers(len(options)))]


def _unique_by_region(scene: Scene, kind: str):
  """Things of `kind` alone in their region, so "the mark at the top left" names one thing."""
  things = scene.of_kind(kind)
  regions = [t.region(scene.width, scene.height) for t in things]
  return [t for t, r in zip(things, regions) if regions.count(r) == 1]


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
  """Every kind of question the scene supports, one phrasing each (chosen by `rng`)."""
  out: list[QA] = []
  w, h = scene.width, scene.height
  marks, boxes, shapes = scene.of_kind("mark"), scene.of_kind("box"), scene.of_kind("shape")

  lonely = _unique_by_region(scene, "mark")
  if lonely:
    mark = lonely[int(rng.integers(len(lonely)))]
    region = mark.region(w, h)
    out.append(QA("fine", "mark_shape", _pick(rng, (
        f"What shape is the small {mark.colour} mark at the {region}?",
        f"Which shape is the tiny {mark.colour} mark in the {region} of the image?",
        f"The small {mark.colour} mark at the {region}: what shape is it?")), mark.shape))
  distinct = [m for m in marks if sum(o.shape == m.shape for o in marks) == 1]
  if distinct:
    mark = distinct[int(rng.integers(len(distinct)))]
    out.append(QA("position", "mark_position", _pick(rng, (
        f"Where is the small {mark.colour} {mark.shape}?",
        f"In which part of the image is the tiny {mark.colour} {mark.shape}?")),
        mark.region(w, h)))
  if marks:
    colour = marks[0].colour
    out.append(QA("fine", "mark_count", _pick(rng, (
        f"How many small {colour} marks are there?",
        f"Count the tiny {colour} marks in the image.",
        f"What is the number of small {colour} marks?")), str(len(marks))))
  if boxes:
    box = boxes[int(rng.integers(len(boxes)))]
    out.append(QA("fine", "box_code", _pick(rng, (
        f"What code is written in the {box.colour} box?",
        f"Read the code inside the {box.colour} box.",
        f"Which code does the box with the {box.colour} border show?")), box.code))
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
  named = [s for s in shapes if sum(o.shape == s.shape for o in shapes) == 1]
  if named:
    shape = named[int(rng.integers(len(named)))]
    out.append(QA("coarse", "shape_colour", _pick(rng, (
        f"What colour is the large {shape.shape}?", f"Which colour is the big {shape.shape}?")),
        shape.colour))
  return out


def _a(word: str) -> str:
  return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def caption(scene: Scene) -> str:
  """A dense caption describing every object, for the alignment stage."""
  w, h = scene.width, scene.height
  parts = [f"{_a(scene.orientation).capitalize()} image with {_a(scene.background)} "
           f"{scene.texture} background."]
  shapes = scene.of_kind("shape")
  parts.append(f"{NUMBERS[len(shapes)].capitalize()} large shape{'s' * (len(shapes) != 1)}: " +
               ", ".join(f"{_a(s.colour)} {s.shape} at the {s.region(w, h)}" for s in shapes) + ".")
  for box in scene.of_kind("box"):
    parts.append(f"{_a(box.colour).capitalize()} box at the {box.region(w, h)} reads {box.code}.")
  marks = scene.of_kind("mark")
  if marks:
    parts.append(f"{NUMBERS[len(marks)].capitalize()} small {marks[0].colour} "
                 f"mark{'s' * (len(marks) != 1)}: " +
                 ", ".join(f"a {m.shape} at the {m.region(w, h)}" for m in marks) + ".")
  return " ".join(parts)
