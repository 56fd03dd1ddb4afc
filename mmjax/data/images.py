"""Decoding image files and bytes into RGB uint8 arrays by one documented rule per PIL mode.

`load_image` is the only entry point the data pipeline uses to turn an encoded image into pixels.
It returns a fresh, writable, C-contiguous `uint8` array of shape (H, W, 3), or raises `ImageError`
(a `ValueError`) whose `reason` is a key of `REASONS`; no other exception escapes for any input.

Steps, in order:
  1. The input is identified from its content (never its file name) among `ACCEPTED_FORMATS`.
  2. The header size is checked against `max_pixels` before any pixel is decoded.
  3. The first frame is fully decoded (animated GIF / PNG / WebP / MPO: frame 0; for an APNG
     that is its default image).
  4. The EXIF orientation (tags 2-8) is applied with `PIL.ImageOps.exif_transpose`.
  5. The pixels become RGB by the rule for their mode:
     - RGB: unchanged. L: grey copied to R, G and B. 1 (bilevel): 0 / 255 grey.
     - Anything with transparency (LA, PA, RGBA, RGBa, P with a transparent index or RGBA
       palette, L / RGB with a PNG colour key): converted to RGBA, then composited over
       `BACKGROUND` as round((c * a + b * (255 - a)) / 255) per channel, so a transparent pixel
       is exactly `BACKGROUND` and an opaque one is unchanged.
     - I;16, I;16L, I;16B, I;16N (16-bit grey) and I (32-bit signed integer, PIL's mode for
       signed 16-bit and for 32-bit TIFF samples; taken on the 16-bit scale): clipped to
       [0, 65535], then round(v * 255 / 65535) (== round(v / 257); never a tie). A 16-bit colour
       key (PNG tRNS) composites over `BACKGROUND` as above.
     - F (32-bit float): rejected as "unsupported" if any value is NaN or infinite; otherwise
       taken to be on the [0, 1] scale (multiplied by 255) if every value lies in [0, 1], else on
       the [0, 255] scale; then clipped to [0, 255] and rounded half up.
     - Everything else (P, CMYK, YCbCr, LAB, HSV, RGBX, ...): PIL's `convert("RGB")`. CMYK uses
       PIL's profile-less formula R = (255 - C) * (255 - K) / 255 (JPEG's Adobe inversion is
       undone by PIL's decoder).

Not handled: embedded ICC profiles are ignored (values are taken as sRGB), and 16-bit RGB / RGBA /
LA samples are reduced to 8 bits by PIL's decoders keeping the high byte, which is within 1 of the
rounded value above (and PIL compares a 16-bit RGB colour key with those 8-bit samples).

Global PIL state is read, never changed. `Image.MAX_IMAGE_PIXELS` still applies: an image over
twice that (PIL's hard limit) is rejected as "too_large" whatever `max_pixels` says, and PIL's
`DecompressionBombWarning` is silenced inside `load_image` because `max_pixels` decides. If other
code in the process sets `ImageFile.LOAD_TRUNCATED_IMAGES = True`, PIL pads truncated files
instead of failing them, and `load_image` then accepts what PIL decodes. PIL's UserWarnings about
damaged metadata it decodes past (TIFF tags, EXIF) are left to the process's warning filters.
"""
import contextlib
import functools
import io
import os
import stat
import threading
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from mmjax import errors

PathOrBytes = str | os.PathLike | bytes | bytearray

# 64 Mpixel: above common camera output (a 50 Mpixel photo is 8688x5792) and below PIL's own
# warning threshold (`Image.MAX_IMAGE_PIXELS`, 89.5 Mpixel), so with the defaults PIL never warns
# about an image that `load_image` accepts. A decoded RGBA image this size is 256 MiB.
MAX_PIXELS = 8192 * 8192

# White, as Hugging Face's `convert_to_rgb` composites RGBA, so that pixels match HF processors.
BACKGROUND = (255, 255, 255)

# Identified from content; others are rejected as "unsupported", keeping rarely exercised decoders
# (and EPS, which runs Ghostscript) away from untrusted data.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

REASONS = {
    "missing": "the path names no file",
    "unreadable": "the path exists but cannot be read as a file (directory, FIFO, permissions)",
    "empty": "zero bytes",
    "unidentified": "no image format recognises the data (not an image, or a mangled header)",
    "unsupported": "a format, mode, value range or argument type outside the rules",
    "too_large": "the header size exceeds max_pixels (or PIL's decompression-bomb limit)",
    "corrupt": "identified, but the header or pixel data fails to decode (truncated, garbled)",
}

_DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

# `warnings.catch_warnings` swaps process-wide state; two threads inside it at once can restore
# each other's filters and leak them, so every use here is serialised: header parsing always,
# decoding only past PIL's warning limit (never with the defaults).
_WARNINGS_LOCK = threading.Lock()


class ImageError(errors.InputError):
  """An input rejected by `load_image`.

  Attributes:
    source: the rejected input's name: its path, "<bytes>", or the caller-supplied name.
    reason: a key of `REASONS`, for counting rejects.
    detail: what was wrong, in words.
  """

  def __init__(self, source: str, reason: str, detail: str):
    if reason not in REASONS:
      raise ValueError(f"Unknown ImageError reason {reason!r}; valid: {sorted(REASONS)}.")
    super().__init__(f"Cannot load image {source} [{reason}]: {detail}")
    self.source, self.reason, self.detail = source, reason, detail

  def __reduce__(self):
    # Rebuilt from the three fields (not the message), so it survives multiprocessing workers.
    return type(self), (self.source, self.reason, self.detail)


def load_image(path_or_bytes: PathOrBytes, max_pixels: int = MAX_PIXELS, *,
               name: str | None = None) -> np.ndarray:
  """Decodes one image to RGB by the module's rules.

  Args:
    path_or_bytes: a file path (str or os.PathLike), or the encoded image (bytes or bytearray).
    max_pixels: the largest width * height accepted, checked on the header before decoding.
    name: what errors call the input; default: the path, or "<bytes>".

  Returns:
    A new writable uint8 array of shape (H, W, 3), H and W after the EXIF orientation.

  Raises:
    ImageError: for every rejected input, with `reason` in `REASONS`.
    ValueError: if `max_pixels` < 1 (a caller error, not a property of the input).
  """
  if max_pixels < 1:
    raise ValueError(f"max_pixels must be at least 1, got {max_pixels}.")
  if isinstance(path_or_bytes, (bytes, bytearray)):
    source = "<bytes>" if name is None else name
    if not path_or_bytes:
      raise ImageError(source, "empty", "0 bytes")
    return _decode(io.BytesIO(path_or_bytes), source, max_pixels)
  if isinstance(path_or_bytes, (str, os.PathLike)):
    source = os.fsdecode(path_or_bytes) if name is None else name
    with _open_file(path_or_bytes, source) as f:
      return _decode(f, source, max_pixels)
  source = repr(path_or_bytes)[:80] if name is None else name
  raise ImageError(source, "unsupported", "expected a path (str or os.PathLike) or bytes, got "
                   f"{type(path_or_bytes).__name__}")


def _open_file(path: str | os.PathLike, source: str) -> BinaryIO:
  """Opens a regular, non-empty file; anything else is an `ImageError`."""
  try:
    st = os.stat(path)
  except (FileNotFoundError, NotADirectoryError):
    raise ImageError(source, "missing", "no such file") from None
  except (OSError, ValueError) as e:  # ValueError: a NUL byte or unencodable character.
    raise ImageError(source, "unreadable", _describe(e)) from e
  if stat.S_ISDIR(st.st_mode):
    raise ImageError(source, "unreadable", "is a directory")
  if not stat.S_ISREG(st.st_mode):
    # A FIFO would block and a device may never end.
    raise ImageError(source, "unreadable", "not a regular file")
  if st.st_size == 0:
    raise ImageError(source, "empty", "0 bytes")
  try:
    return open(path, "rb")
  except FileNotFoundError:  # Removed since the stat.
    raise ImageError(source, "missing", "no such file") from None
  except OSError as e:
    raise ImageError(source, "unreadable", _describe(e)) from e


def _decode(f: BinaryIO, source: str, max_pixels: int) -> np.ndarray:
  image = _identify(f, source)
  width, height = image.size
  if width < 1 or height < 1:
    raise ImageError(source, "corrupt", f"degenerate size {width}x{height}")
  if width * height > max_pixels:
    raise ImageError(source, "too_large", f"{image.format} header size {width}x{height} = "
                     f"{width * height} pixels exceeds max_pixels={max_pixels}")
  # PIL checks its limit again while decoding (TIFF); it can only warn past that limit.
  limit = Image.MAX_IMAGE_PIXELS
  pil_may_warn = limit is not None and width * height > limit
  try:
    with _bomb_warnings_ignored() if pil_may_warn else contextlib.nullcontext():
      image.load()  # The full decode of frame 0: truncated or garbled data fails here.
      ImageOps.exif_transpose(image, in_place=True)
  except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, ValueError, ...
    raise ImageError(source, "corrupt", _describe(e)) from e
  return _to_rgb(image, source)


def _identify(f: BinaryIO, source: str) -> Image.Image:
  """Opens `f` lazily (header only) as one of `ACCEPTED_FORMATS`."""
  with _bomb_warnings_ignored():
    try:
      return Image.open(f, formats=_available_formats())
    except Image.UnidentifiedImageError:
      pass
    except Image.DecompressionBombError as e:
      raise ImageError(source, "too_large", _describe(e)) from e
    except Exception as e:  # A plugin failing on a header it claimed: ValueError, OSError, ...
      raise ImageError(source, "corrupt", _describe(e)) from e
    # Only to tell an unaccepted format from non-image data: the header is parsed, never decoded.
    try:
      image_format = Image.open(f).format
    except Exception:
      raise ImageError(source, "unidentified", "no image format recognises the data") from None
  raise ImageError(source, "unsupported", f"{image_format} files are not accepted (accepted: "
                   f"{', '.join(ACCEPTED_FORMATS)})")


@contextlib.contextmanager
def _bomb_warnings_ignored():
  """Silences PIL's `DecompressionBombWarning`: `max_pixels` decides instead."""
  with _WARNINGS_LOCK, warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    yield


@functools.cache
def _available_formats() -> tuple[str, ...]:
  # `Image.open` fails with a KeyError on a format this PIL build lacks (AVIF is optional).
  Image.init()
  return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN)


def _to_rgb(image: Image.Image, source: str) -> np.ndarray:
  if image.mode in _DEEP_MODES:
    return _deep_to_rgb(image, source)
  try:
    if image.has_transparency_data:
      return _composite(np.asarray(image.convert("RGBA")))
    return np.array(image.convert("RGB"))
  except ValueError as e:  # PIL's "conversion from X to Y not supported".
    raise ImageError(source, "unsupported", f"mode {image.mode}: {_describe(e)}") from e
  except Exception as e:
    raise ImageError(source, "corrupt", f"mode {image.mode}: {_describe(e)}") from e


def _composite(rgba: np.ndarray) -> np.ndarray:
  """(H, W, 4) uint8 → (H, W, 3) uint8 over `BACKGROUND`, rounded to nearest (never a tie)."""
  color = rgba[..., :3].astype(np.uint16)
  alpha = rgba[..., 3:].astype(np.uint16)
  background = np.array(BACKGROUND, np.uint16)
  # At most 255 * 255 + 127: fits uint16.
  return ((color * alpha + background * (255 - alpha) + 127) // 255).astype(np.uint8)


def _deep_to_rgb(image: Image.Image, source: str) -> np.ndarray:
  """16-bit, 32-bit integer and float grey → (H, W, 3) uint8 by the module's rules."""
  values = np.asarray(image)
  if image.mode == "F":
    if not np.isfinite(values).all():
      raise ImageError(source, "unsupported", "float (mode F) image has NaN or infinite values")
    if values.min() >= 0 and values.max() <= 1:
      values = values * np.float32(255)
    grey = np.floor(np.clip(values, 0, 255) + np.float32(0.5)).astype(np.uint8)
  else:
    grey = ((np.clip(values, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
  rgb = np.repeat(grey[..., None], 3, axis=2)
  key = image.info.get("transparency")
  if isinstance(key, int) and image.mode != "F":
    rgb[values == key] = BACKGROUND
  return rgb


def _describe(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text}" if text else type(e).__name__
