"""Procedural scenes whose fine details a 224-px view shrinks below 3 px.

A scene is a textured background of a named colour, a few large shapes (coarse content) and small
details sized as a fraction of the image's long side, so that after downscaling the long side to
224 px a detail is under 3 px — below a reader's legibility (not a probe's: told where a mark or
a code is, an MLP reads much of it at 224 px; README, benchmarks/detail_legibility.py) — while at
full resolution it spans 6–13 px:
  * a fine checkerboard: a square patch drawn as a checker of two complementary colours (red and
    cyan, green and magenta, or blue and yellow) whose period is 2.8 px when the long side is
    448 px. Every pair averages to the same grey, and at 224 px the period (1.4 px) is under the
    2 px a view can hold, so the low-resolution view shows a plain grey square whatever the pair;
    the pattern is large, so learning it needs no search for a needle,
  * small marks: one to three copies of one mark (circle / square / triangle / cross) in one
    colour that stands out from the background, drawn at equal ink area so that a blurred blob's
    brightness does not give its shape away,
  * labelled boxes: a white box with a coloured border holding a short code in small type.
Clutter is kept low (no texture looks like a mark; large shapes differ in kind and colour) so the
fine details are learnable from scratch at CPU budgets: see benchmarks/dataset_learnability.py.
Everything drawn is recorded in a `Scene`, from which questions and dense captions are made.
"""
import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Complementary pairs of the fine checkerboard: each averages to (127.5, 127.5, 127.5).
PATTERN_PAIRS = {
    "red and cyan": ((255, 0, 0), (0, 255, 255)),
    "green and magenta": ((0, 255, 0), (255, 0, 255)),
    "blue and yellow": ((0, 0, 255), (255, 255, 0)),
}
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
# Each mark's extent as a fraction of the detail size, so that every mark has the ink area of the
# triangle (half its box): a blurred mark's brightness says nothing about its shape.
MARK_EXTENT = {"circle": 0.80, "triangle": 1.0, "cross": 0.95}
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
  pattern_frac: float = 2.8 / 448  # Checkerboard period (two cells) as a fraction of the long side.
  num_shapes: tuple[int, int] = (1, 3)  # Range of the number of large shapes.
  num_marks: tuple[int, int] = (1, 3)  # Range of the number of small marks.
  num_boxes: tuple[int, int] = (1, 2)  # Range of the number of labelled boxes.
  code_length: int = 1  # Characters per box code.

  def __post_init__(self):
    if self.detail_frac * LOW_RES >= LEGIBLE_PX:
      raise ValueError(f"detail_frac={self.detail_frac} makes details "
                       f"{self.detail_frac * LOW_RES:.2f} px high at {LOW_RES} px: they must "
                       f"stay under {LEGIBLE_PX} px (detail_frac < {LEGIBLE_PX / LOW_RES:.4f}).")
    if not 2.0 / 448 < self.pattern_frac <= 1.5 / LOW_RES:
      raise ValueError(f"pattern_frac={self.pattern_frac} must give a checkerboard period over "
                       f"2 px at 448 px (visible) and at most 1.5 px at {LOW_RES} px (averaged "
                       f"away): {2.0 / 448:.5f} < pattern_frac <= {1.5 / LOW_RES:.5f}.")
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
  kind: str  # "shape", "mark", "box" or "pattern".
  shape: str  # circle / square / triangle / cross ("box" for boxes).
  colour: str  # A COLOURS name (a PATTERN_PAIRS name for the pattern).
  box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels.
  code: str = ""  # Boxes only.

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


def checkerboard(size: int, period: float, pair: str) -> np.ndarray:
  """A size×size uint8 checker of the pair's two colours, `period` px per two cells, each pixel
  the exact area average of the ideal pattern over it (4×4 supersampling), so a period that is
  not a whole number of pixels stays regular instead of beating into coarse stripes."""
  ss = 4
  centres = (np.arange(size * ss) + 0.5) / ss / (period / 2)
  second = (np.floor(centres)[:, None] + np.floor(centres)[None, :]) % 2
  share = second.reshape(size, ss, size, ss).mean(axis=(1, 3))[..., None]
  a, b = (np.asarray(c, np.float64) for c in PATTERN_PAIRS[pair])
  return np.round(a * (1 - share) + b * share).astype(np.uint8)


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

  # The fine checkerboard: large, so finding it is easy; its colours are what needs resolution.
  pair = str(rng.choice(list(PATTERN_PAIRS)))
  size = int(rng.uniform(0.14, 0.2) * short)
  box = _free_box(rng, taken, width, height, size, size, margin=int(0.02 * short))
  if box is not None:
    image.paste(Image.fromarray(checkerboard(size, spec.pattern_frac * max(width, height), pair)),
                box[:2])
    things.append(Thing("pattern", "square", pair, box))
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
  size = max(int(round(detail * MARK_EXTENT[shape])), 2)
  for _ in range(int(rng.integers(spec.num_marks[0], spec.num_marks[1] + 1))):
    box = _free_box(rng, taken, width, height, size, size, margin=int(2 * detail))
    if box is None:
      continue
    _draw_shape(draw, shape, box, COLOURS[mark_colour])
    things.append(Thing("mark", shape, mark_colour, box))
    taken.append(box)
  return image, Scene(width, height, background, texture, detail, tuple(things))
