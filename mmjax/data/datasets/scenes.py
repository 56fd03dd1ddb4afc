"""Procedural scenes whose fine content only a high-resolution view holds.

A scene is a textured background of a named colour, a few large shapes (coarse content), fine
content drawn in checks too fine for a 224-px view, and small objects to locate:
  * a grey panel hiding one to three figures of one shape (circle / triangle / cross) drawn in
    checks of two complementary colours (red and cyan, green and magenta, or blue and yellow)
    whose period is 2.8 px when the long side is 448 px. Every pair averages to the panel's
    grey, and at 224 px the period (1.4 px) is under the 2 px a view can hold, so the
    low-resolution view shows a plain grey square whatever the pair, shape and number;
  * a grey card hiding a digit, drawn the same way in checks of another pair (orange and azure);
    the panel (a quarter of the long side, each figure a tenth) and the card are large, so
    reading them needs no search for a needle: what it needs is resolution;
  * small marks (one to three copies of one mark in a colour that stands out from the
    background) and labelled boxes (a white box with a coloured border holding a digit in small
    type), under 3 px at 224 px, for the position questions and the captions. (Told where a mark
    or a code is, an MLP reads much of it at 224 px: docs/results, benchmarks/detail_legibility.py.)
Clutter is kept low (no texture looks like a mark; large shapes differ in kind and colour).
Everything drawn is recorded in a `Scene`, from which questions and dense captions are made.
"""
import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Complementary pairs of the hidden figures' fine checks: each averages to (127.5, 127.5, 127.5).
PATTERN_PAIRS = {
    "red and cyan": ((255, 0, 0), (0, 255, 255)),
    "green and magenta": ((0, 255, 0), (255, 0, 255)),
    "blue and yellow": ((0, 0, 255), (255, 255, 0)),
}
# The pair of the hidden digit's checks, of the same grey and none of the figures': a detector of
# the figures' checks does not count the digit's as a figure.
DIGIT_PAIR = "orange and azure"
CHECK_PAIRS = PATTERN_PAIRS | {DIGIT_PAIR: ((255, 128, 0), (0, 127, 255))}
COLOURS = {  # Saturated colours of shapes, marks and box borders.
    "red": (215, 35, 35), "green": (30, 160, 60), "blue": (35, 75, 215),
    "yellow": (240, 200, 30), "purple": (140, 55, 185), "orange": (245, 125, 25),
}
BACKGROUNDS = {  # Muted background colours (the "dominant colour" of the image).
    "grey": (128, 128, 128), "beige": (205, 190, 150), "teal": (70, 140, 140),
    "pink": (225, 160, 175), "olive": (120, 125, 60), "navy": (45, 55, 105),
}
TEXTURES = ("plain", "stripes", "checks", "waves", "noise")
SHAPES = ("circle", "square", "triangle")
# Circle and square are left out: at equal area and a few pixels across they differ by a pixel.
MARK_SHAPES = ("circle", "triangle", "cross")
# A mark's or a hidden figure's extent as a fraction of its size, so that every shape has the ink
# area of the triangle (half its box): a blurred mark's brightness says nothing about its shape,
# and the hidden figures' checks cover an area proportional to their number whatever the shape.
EXTENT = {"circle": 0.80, "triangle": 1.0, "cross": 0.95}
# Hidden figures and digits: drawn in fine checks on a panel of the checks' own grey, so at 224 px
# the panel is plain grey, while at 448 px the figures' outlines show.
FIGURE_SHAPES = ("circle", "triangle", "cross")
CARD_ASPECT = 0.75  # A hidden-digit card's width over its height.
DIGIT_FRAC = 0.7  # A hidden digit's height as a fraction of its card's.
DIGIT_STROKE = 0.08  # The outline added to the digit's strokes, as a fraction of its height.
SS = 4  # Supersampling of checkered pictures: each pixel is the average of SS×SS samples.
MARK_CONTRAST = 120  # Least RGB distance between the marks' colour and the background's.
CODE_ALPHABET = "0123456789"
REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
           "bottom right")
LOW_RES = 224  # The long side of the low-resolution view the details must be illegible at.
LEGIBLE_PX = 3.0  # A glyph or mark under this many pixels high cannot be read.


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """How scenes are drawn. Sizes are in pixels of the generated image."""
  long_side: tuple[int, int] = (512, 1024)  # Range of the image's long side.
  max_aspect: float = 3.0  # Aspect ratios from 1:max_aspect to max_aspect:1 (log-uniform).
  detail_frac: float = 0.013  # Detail (glyph / mark) height as a fraction of the long side.
  pattern_frac: float = 2.8 / 448  # Checks' period (two cells) as a fraction of the long side.
  num_shapes: tuple[int, int] = (1, 3)  # Range of the number of large shapes.
  # Ranges of a hidden-figure panel's side and of a hidden-digit card's height, as fractions of
  # the long side (at most 0.9 of the short one).
  panel_frac: tuple[float, float] = (0.24, 0.3)
  card_frac: tuple[float, float] = (0.2, 0.26)
  # A hidden figure's size (the triangle's side; `EXTENT`) as a fraction of the long side: one
  # size for all, so that the figures' checks cover an area proportional to their number.
  figure_frac: float = 0.1
  num_figures: tuple[int, int] = (1, 3)  # Range of the number of figures hidden in the panel.
  num_marks: tuple[int, int] = (1, 3)  # Range of the number of small marks.
  num_boxes: tuple[int, int] = (1, 2)  # Range of the number of labelled boxes.
  code_length: int = 1  # Characters per box code.

  def __post_init__(self):
    if self.detail_frac * LOW_RES >= LEGIBLE_PX:
      raise ValueError(f"detail_frac={self.detail_frac} makes details "
                       f"{self.detail_frac * LOW_RES:.2f} px high at {LOW_RES} px: they must "
                       f"stay under {LEGIBLE_PX} px (detail_frac < {LEGIBLE_PX / LOW_RES:.4f}).")
    if not 2.0 / 448 < self.pattern_frac <= 1.5 / LOW_RES:
      raise ValueError(f"pattern_frac={self.pattern_frac} must give a period of the checks over "
                       f"2 px at 448 px (visible) and at most 1.5 px at {LOW_RES} px (averaged "
                       f"away): {2.0 / 448:.5f} < pattern_frac <= {1.5 / LOW_RES:.5f}.")
    if not 0 < self.figure_frac < min(self.panel_frac[0], 0.9 / self.max_aspect) / 2:
      raise ValueError(f"figure_frac={self.figure_frac} must be under half the smallest panel "
                       f"side ({min(self.panel_frac[0], 0.9 / self.max_aspect) / 2:.3f} of the "
                       f"long side), so that each figure fits a quarter of its panel.")
    if not 1 <= self.num_figures[0] <= self.num_figures[1] <= 4:
      raise ValueError(f"num_figures={self.num_figures}: the panel has four quarters, one "
                       f"figure each (1 <= low <= high <= 4).")
    if self.num_boxes[1] > len(COLOURS) or self.num_shapes[1] > len(SHAPES):
      raise ValueError(f"num_boxes ≤ {len(COLOURS)} (box colours) and num_shapes ≤ {len(SHAPES)} "
                       f"(large shapes differ in kind) are required.")

  @property
  def pixel_aspect(self) -> float:
    """The largest aspect ratio of a drawn image: `max_aspect`, a little over it once the short
    side is rounded to whole pixels (3.006 for long sides of 512–1024 px)."""
    return max(long / max(round(long / self.max_aspect), 64)
               for long in range(self.long_side[0], self.long_side[1] + 1))


@dataclasses.dataclass(frozen=True)
class Thing:
  kind: str  # "shape", "mark", "box", "panel", "figure" or "card".
  shape: str  # circle / square / triangle / cross ("box" for boxes and cards).
  colour: str  # A COLOURS name (a CHECK_PAIRS name for the checkered kinds).
  box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels.
  code: str = ""  # Boxes and cards only.

  def region(self, width: int, height: int) -> str:
    cx, cy = (self.box[0] + self.box[2]) / 2 / width, (self.box[1] + self.box[3]) / 2 / height
    return REGIONS[3 * min(int(cy * 3), 2) + min(int(cx * 3), 2)]


@dataclasses.dataclass(frozen=True)
class Scene:
  width: int
  height: int
  background: str  # A BACKGROUNDS name.
  texture: str
  detail_px: float  # Height of a glyph / mark, in pixels of this image.
  things: tuple[Thing, ...]

  def of_kind(self, kind: str) -> list[Thing]:
    return [t for t in self.things if t.kind == kind]

  @property
  def orientation(self) -> str:
    ratio = self.width / self.height
    return "landscape" if ratio > 1.15 else "portrait" if ratio < 1 / 1.15 else "square"


def _size(rng: np.random.Generator, spec: SceneSpec) -> tuple[int, int]:
  long = int(rng.integers(spec.long_side[0], spec.long_side[1] + 1))
  aspect = math.exp(rng.uniform(-math.log(spec.max_aspect), math.log(spec.max_aspect)))
  short = max(int(round(long / max(aspect, 1 / aspect))), 64)
  return (long, short) if aspect >= 1 else (short, long)


def _texture(rng: np.random.Generator, name: str, base: tuple[int, int, int], width: int,
             height: int) -> np.ndarray:
  """A [H, W, 3] uint8 background: the base colour modulated by a texture of amplitude ±30."""
  # A row and a column broadcast against each other: a texture costs one pass over the image.
  y = np.arange(height, dtype=np.float32)[:, None]
  x = np.arange(width, dtype=np.float32)[None, :]
  period = rng.uniform(0.04, 0.1) * max(width, height)
  if name == "plain":
    pattern = np.zeros((height, width), np.float32)
  elif name == "stripes":
    angle = rng.uniform(0, math.pi)
    pattern = np.sign(np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period))
  elif name == "checks":
    pattern = np.where((x // period + y // period) % 2 == 0, 1.0, -1.0)
  elif name == "waves":
    pattern = np.sin(2 * math.pi * x / period + 3 * np.sin(2 * math.pi * y / (2 * period)))
  else:  # noise: smooth value noise, upsampled from a coarse grid.
    coarse = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
    img = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pattern = np.clip(np.asarray(img), -1, 1)
  out = np.asarray(base, np.float32)[None, None] + 30.0 * pattern[..., None]
  return np.clip(out, 0, 255).astype(np.uint8)


def _free_box(rng, taken, width, height, w, h, margin):
  """A random (x0, y0, x1, y1) of size w×h inside the image, clear of `taken` by `margin`."""
  for _ in range(200):
    x0 = int(rng.integers(margin, max(width - w - margin, margin + 1)))
    y0 = int(rng.integers(margin, max(height - h - margin, margin + 1)))
    box = (x0, y0, x0 + w, y0 + h)
    if all(box[2] + margin <= t[0] or t[2] + margin <= box[0] or box[3] + margin <= t[1]
           or t[3] + margin <= box[1] for t in taken):
      return box
  return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
  x0, y0, x1, y1 = box
  if shape == "circle":
    draw.ellipse(box, fill=fill)
  elif shape == "square":
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
  elif shape == "triangle":
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
  else:  # cross
    t = max((x1 - x0) // 3, 1)
    draw.rectangle((x0, y0 + t, x1 - 1, y1 - 1 - t), fill=fill)
    draw.rectangle((x0 + t, y0, x1 - 1 - t, y1 - 1), fill=fill)


def _swing(n: int, period: float) -> np.ndarray:
  """[n] the mean over each pixel of a ±1 wave that flips every half `period` (SS samples)."""
  flips = np.floor((np.arange(n * SS) + 0.5) / SS / (period / 2))
  return (1 - 2 * (flips % 2)).reshape(n, SS).mean(axis=1)


def checkered(amplitude: np.ndarray, period: float, pair: str) -> np.ndarray:
  """A [H, W, 3] uint8 image from a [H, W] amplitude in [0, 1]: the pair's mean grey plus
  `amplitude` times a checker of the pair's two colours, `period` px per two cells. The checker
  is the exact area average of the ideal pattern over each pixel (a product of two ±1 waves, so
  it averages row by column), so a period that is not a whole number of pixels stays regular
  instead of beating into coarse stripes; the amplitude is taken as constant over a pixel, which
  it is for a plain square and nearly so for a mask blurred over a period (`_hidden`)."""
  h, w = amplitude.shape
  swing = (amplitude * np.outer(_swing(h, period), _swing(w, period)))[..., None]
  a, b = (np.asarray(c, np.float64) for c in CHECK_PAIRS[pair])
  return np.round((a + b) / 2 + swing * (a - b) / 2).astype(np.uint8)


def _hidden(mask: Image.Image, period: float, pair: str) -> np.ndarray:
  """`checkered` inside a mask drawn at SS× the resolution, its checks fading in over about a
  period across the mask's edge: a hard edge would cut cells in two, and the halves left over
  would trace the figure at 224 px (±20 levels, where the interior stays within ±10)."""
  size = (mask.width // SS, mask.height // SS)
  soft = mask.resize(size, Image.BOX).filter(ImageFilter.GaussianBlur(period / 2))
  return checkered(np.asarray(soft, np.float64) / 255, period, pair)


def _figures_mask(rng: np.random.Generator, side: int, figure: int, shape: str,
                  count: int) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
  """The SS× mask of a side×side panel holding `count` figures of one shape, `figure` px wide,
  each in its own quarter of the panel (a quarter chosen at random, the figure shifted in it at
  random), and the figures' boxes in the panel's pixels."""
  mask = Image.new("L", (side * SS, side * SS))
  draw = ImageDraw.Draw(mask)
  half, size = side * SS // 2, figure * SS
  boxes = []
  for quarter in rng.permutation(4)[:count]:
    x0 = (quarter % 2) * half + int(rng.integers(0, half - size + 1))
    y0 = (quarter // 2) * half + int(rng.integers(0, half - size + 1))
    _draw_shape(draw, shape, (x0, y0, x0 + size, y0 + size), 255)
    boxes.append((x0 // SS, y0 // SS, (x0 + size) // SS, (y0 + size) // SS))
  return mask, boxes


def _digit_mask(rng: np.random.Generator, width: int, height: int, digit: str) -> Image.Image:
  """The SS× mask of a width×height card with one bold digit, DIGIT_FRAC of its height."""
  # Pillow's bundled font draws digits about 0.67 of its size high; the stroke thickens them.
  font = ImageFont.load_default(size=max(int(DIGIT_FRAC * height * SS / 0.67), 4))
  stroke = max(int(round(DIGIT_STROKE * DIGIT_FRAC * height * SS)), 1)
  mask = Image.new("L", (width * SS, height * SS))
  left, top, right, bottom = font.getbbox(digit, stroke_width=stroke)
  slack_x, slack_y = width * SS - (right - left), height * SS - (bottom - top)
  x = int(rng.integers(slack_x // 4, max(3 * slack_x // 4, slack_x // 4 + 1))) - left
  y = int(rng.integers(slack_y // 4, max(3 * slack_y // 4, slack_y // 4 + 1))) - top
  ImageDraw.Draw(mask).text((x, y), digit, font=font, fill=255, stroke_width=stroke,
                            stroke_fill=255)
  return mask


def render(rng: np.random.Generator, spec: SceneSpec) -> tuple[Image.Image, Scene]:
  """Draws one scene; deterministic given the generator's state."""
  width, height = _size(rng, spec)
  background = str(rng.choice(list(BACKGROUNDS)))
  texture = str(rng.choice(TEXTURES))
  image = Image.fromarray(_texture(rng, texture, BACKGROUNDS[background], width, height))
  draw = ImageDraw.Draw(image)
  detail = spec.detail_frac * max(width, height)
  things: list[Thing] = []
  taken: list[tuple[int, int, int, int]] = []

  short = min(width, height)
  num_shapes = int(rng.integers(spec.num_shapes[0], spec.num_shapes[1] + 1))
  # Distinct kinds and colours: "the large circle" names one shape, whose colour is one answer.
  for shape, colour in zip(rng.permutation(SHAPES)[:num_shapes],
                           rng.permutation(list(COLOURS))[:num_shapes]):
    shape, colour = str(shape), str(colour)
    size = int(rng.uniform(0.22, 0.32) * short)
    box = _free_box(rng, taken, width, height, size, size, margin=int(0.02 * short))
    if box is None:
      continue
    _draw_shape(draw, shape, box, COLOURS[colour])
    things.append(Thing("shape", shape, colour, box))
    taken.append(box)

  # A panel hiding 1–3 figures of one shape in checks of one pair, and a card hiding a digit in
  # checks of the card's own pair: the panel's pair, shape and count need resolution and no
  # search, and the card's checks never add to the panel's.
  period = spec.pattern_frac * max(width, height)
  side = min(int(rng.uniform(*spec.panel_frac) * max(width, height)), int(0.9 * short))
  pair, shape = str(rng.choice(list(PATTERN_PAIRS))), str(rng.choice(FIGURE_SHAPES))
  count = int(rng.integers(spec.num_figures[0], spec.num_figures[1] + 1))
  box = _free_box(rng, taken, width, height, side, side, margin=int(0.02 * short))
  if box is not None:
    figure = int(round(spec.figure_frac * max(width, height) * EXTENT[shape]))
    mask, figures = _figures_mask(rng, side, figure, shape, count)
    image.paste(Image.fromarray(_hidden(mask, period, pair)), box[:2])
    things.append(Thing("panel", "square", pair, box))
    things.extend(Thing("figure", shape, pair, (box[0] + f[0], box[1] + f[1], box[0] + f[2],
                                                box[1] + f[3])) for f in figures)
    taken.append(box)
  digit = str(rng.choice(list(CODE_ALPHABET)))
  card_h = min(int(rng.uniform(*spec.card_frac) * max(width, height)), int(0.9 * short))
  card_w = int(CARD_ASPECT * card_h)
  box = _free_box(rng, taken, width, height, card_w, card_h, margin=int(0.02 * short))
  if box is not None:
    hidden = _hidden(_digit_mask(rng, card_w, card_h, digit), period, DIGIT_PAIR)
    image.paste(Image.fromarray(hidden), box[:2])
    things.append(Thing("card", "box", DIGIT_PAIR, box, digit))
    taken.append(box)

  # The font size whose digits are `detail` px high (Pillow's bundled font: digit height ≈ 0.67
  # of the size), so every machine with the pinned Pillow draws the same glyphs.
  font = ImageFont.load_default(size=max(int(round(detail / 0.67)), 4))
  box_colours = rng.permutation(list(COLOURS))
  for colour in box_colours[:int(rng.integers(spec.num_boxes[0], spec.num_boxes[1] + 1))]:
    code = "".join(rng.choice(list(CODE_ALPHABET), spec.code_length))
    left, top, right, bottom = font.getbbox(code)
    pad, border = max(int(detail * 0.4), 2), max(int(detail * 0.2), 1)
    w, h = right - left + 2 * (pad + border), bottom - top + 2 * (pad + border)
    box = _free_box(rng, taken, width, height, w, h, margin=int(detail))
    if box is None:
      continue
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=COLOURS[str(colour)])
    draw.rectangle((box[0] + border, box[1] + border, box[2] - 1 - border, box[3] - 1 - border),
                   fill=(255, 255, 255))
    draw.text((box[0] + border + pad - left, box[1] + border + pad - top), code, font=font,
              fill=(0, 0, 0))
    things.append(Thing("box", "box", str(colour), box, code))
    taken.append(box)

  # All marks share a colour and a shape ("the small red marks are crosses"): the ladder's first
  # rungs ask for that shape, then for their number.
  visible = [c for c, rgb in COLOURS.items()
             if np.linalg.norm(np.subtract(rgb, BACKGROUNDS[background])) >= MARK_CONTRAST]
  mark_colour, shape = str(rng.choice(visible)), str(rng.choice(MARK_SHAPES))
  size = max(int(round(detail * EXTENT[shape])), 2)
  for _ in range(int(rng.integers(spec.num_marks[0], spec.num_marks[1] + 1))):
    box = _free_box(rng, taken, width, height, size, size, margin=int(2 * detail))
    if box is None:
      continue
    _draw_shape(draw, shape, box, COLOURS[mark_colour])
    things.append(Thing("mark", shape, mark_colour, box))
    taken.append(box)
  return image, Scene(width, height, background, texture, detail, tuple(things))
