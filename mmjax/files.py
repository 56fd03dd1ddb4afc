"""Input files and output folders, checked before they are read or written.

A path given where a file is expected must be a regular file: a FIFO would block a reader
forever, a device (`/dev/zero`) never ends, a folder is an error deep inside a library. Text
inputs are read up to a stated limit. An output folder must be a folder (or creatable) and
writable, and is checked before anything is written.
"""
import json
import os
import pathlib
import stat
from typing import Any

from mmjax import errors

# The largest JSON read whole into memory (a config, a tokenizer.json, an ingestion's records:
# LLaVA-1.5's 665k-conversation mix is about 1 GB).
MAX_JSON_BYTES = 4 << 30


def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                     (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                     (stat.S_ISSOCK, "a socket")):
    if test(mode):
      return name
  return "not a regular file"


def regular_file(path: str | os.PathLike, what: str,
                 max_bytes: int | None = None) -> pathlib.Path:
  """`path` if it is a readable regular file (of at most `max_bytes`), else an `InputError`
  naming `what` and the path (stat does not open it: a FIFO never blocks here)."""
  path = pathlib.Path(path)
  try:
    st = path.stat()
  except FileNotFoundError:
    raise errors.InputError(errors.message(f"{what} {path}", "no such file",
                                           "check the path")) from None
  except OSError as e:
    raise errors.InputError(errors.message(f"{what} {path}", e.strerror or str(e))) from None
  if not stat.S_ISREG(st.st_mode):
    raise errors.InputError(errors.message(f"{what} {path}", f"is {_kind(st.st_mode)}",
                                           "give a regular file"))
  if max_bytes is not None and st.st_size > max_bytes:
    raise errors.InputError(errors.message(
        f"{what} {path}", f"{st.st_size:,} bytes, over the limit of {max_bytes:,}",
        "is it the right file?"))
  if not os.access(path, os.R_OK):
    raise errors.InputError(errors.message(f"{what} {path}", "not readable (permissions)"))
  return path


def read_json(path: str | os.PathLike, what: str, max_bytes: int | None = None) -> Any:
  """The JSON value in `path` (a regular file of at most `max_bytes`, default
  `MAX_JSON_BYTES`); an `InputError` naming `what` when it is not one or does not parse."""
  path = regular_file(path, what, MAX_JSON_BYTES if max_bytes is None else max_bytes)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON.
    raise errors.InputError(errors.message(f"{what} {path}", f"not valid JSON ({e})")) from None


def output_folder(path: str | os.PathLike, what: str) -> pathlib.Path:
  """`path` if it is a writable folder or can be created as one (nothing is created here)."""
  path = pathlib.Path(path)
  if path.exists() or path.is_symlink():
    if not path.is_dir():
      raise errors.InputError(errors.message(f"{what} {path}", "exists and is not a folder",
                                             "give a folder path"))
    if not os.access(path, os.W_OK | os.X_OK):
      raise errors.InputError(errors.message(f"{what} {path}", "not writable (permissions)"))
    return path
  parent = path.absolute().parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise errors.InputError(errors.message(f"{what} {path}", f"{parent} is not a folder",
                                           "give a folder path"))
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.InputError(errors.message(f"{what} {path}",
                                           f"cannot be created: {parent} is not writable"))
  return path


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
  """Whether `path` is `folder` or lies inside it (symlinks resolved)."""
  path, folder = pathlib.Path(path).resolve(), pathlib.Path(folder).resolve()
  return path == folder or folder in path.parents
