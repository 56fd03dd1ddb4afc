"""LLaVA-format ingestion: every record accepted or rejected with its reason, exact counts, pixels
and conversations read back, determinism, the command line, and 1,000 records in seconds.

Every image, broken or not, is made here (PIL, or PNG chunks by hand); nothing is downloaded.
"""
import filecmp
import io
import json
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from mmjax import errors
from mmjax.data import images
from mmjax.data import ingest
from mmjax.data.datasets import llava_json

ORIENTATION = 0x0112  # EXIF tag.


def encode(image: Image.Image, image_format: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, image_format, **kwargs)
  return buffer.getvalue()


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes | None) -> bytes:
  """A PNG written chunk by chunk with valid CRCs (a 16-bit grey image, or a huge IHDR with no
  IDAT); `raw` is the filtered scanlines, or None for no pixel data."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
  idat = b"" if raw is None else chunk(b"IDAT", zlib.compress(raw))
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def turns(question: str = "<image>\nWhat is shown?", answer: str = "A test pattern.") -> list:
  return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def entry(record_id, image: str | None = None, conversations: list | None = None) -> dict:
  record = {"id": record_id, "conversations": conversations or turns()}
  if image is not None:
    record["image"] = image
  return record


def text_only(record_id) -> dict:
  return entry(record_id, conversations=turns("Say hello.", "Hello."))


def noise(seed: int, height: int, width: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# The mixed set -----------------------------------------------------------------------------------

SIXTEEN_BIT = [0, 257, 385, 386, 32768, 65535]  # round(v / 257): 0, 1, 1, 2, 128, 255.
MULTI_TURN = turns() + turns("And its colour?", "Grey.")

EXPECTED_REJECTED = {
    "duplicate_id": 2, "empty_answer": 1, "image_corrupt": 2, "image_empty": 1,
    "image_missing": 1, "image_outside_root": 3, "image_too_large": 1, "image_unidentified": 1,
    "image_without_tag": 1, "malformed": 4, "tag_without_image": 1,
}
EXPECTED_FIRST_IDS = {
    "duplicate_id": ["png", "missing"], "empty_answer": ["empty_answer"],
    "image_corrupt": ["truncated_png", "truncated_jpeg"], "image_empty": ["zero_bytes"],
    "image_missing": ["missing"], "image_outside_root": ["traversal", "absolute", "symlink"],
    "image_too_large": ["huge_header"], "image_unidentified": ["text_as_jpg"],
    "image_without_tag": ["image_without_tag"],
    "malformed": ["#15", "#16", "no_turns", "int_value"],  # #i: entry i has no usable id.
    "tag_without_image": ["tag_without_image"],
}
ACCEPTED = {"png", "jpeg", "cmyk", "png16", "palette", "exif_rotated", "tall", "text_only",
            "multi_turn", "12345"}


def write_mixed(root) -> tuple[str, str]:
  """(json path, image folder) of good and broken records; the outside folder holds a valid
  image that a symlink and an absolute path point at, which must never be read."""
  folder, outside = root / "images", root / "outside"
  (folder / "sub").mkdir(parents=True)
  outside.mkdir()
  files = {
      "sub/png.png": encode(Image.fromarray(noise(0, 8, 12)), "PNG"),
      "jpeg.jpg": encode(Image.fromarray(noise(1, 16, 16)), "JPEG", quality=90),
      "cmyk.jpg": encode(Image.new("CMYK", (24, 16), (0, 255, 255, 0)), "JPEG", quality=100),
      "png16.png": png_bytes(len(SIXTEEN_BIT), 1, 16, 0,
                             b"\x00" + struct.pack(f">{len(SIXTEEN_BIT)}H", *SIXTEEN_BIT)),
      "exif.jpg": encode(Image.fromarray(np.full((32, 48, 3), 40, np.uint8)), "JPEG",
                         exif=_exif(6)),  # Stored 48 wide, 32 high; shown turned clockwise.
      "tall.png": encode(Image.new("L", (1, 5000), 9), "PNG"),
      "truncated.png": encode(Image.fromarray(noise(2, 64, 64)), "PNG")[:2000],
      "truncated.jpg": encode(Image.fromarray(noise(3, 64, 64)), "JPEG")[:1000],
      "zero.jpg": b"",
      "text.jpg": b"not an image at all\n" * 10,
      "huge.png": png_bytes(60000, 60000, 8, 2, None),
  }
  palette = Image.fromarray(np.array([[0, 1, 2, 1]], np.uint8), "P")
  palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
  files["palette.png"] = encode(palette, "PNG", transparency=1)
  for name, data in files.items():
    (folder / name).write_bytes(data)
  (outside / "secret.png").write_bytes(files["sub/png.png"])
  (folder / "link.png").symlink_to(outside / "secret.png")
  records = [
      entry("png", "sub/png.png"),                                        # 0
      entry("jpeg", "jpeg.jpg"),
      entry("cmyk", "cmyk.jpg"),
      entry("png16", "png16.png"),
      entry("palette", "palette.png"),
      entry("exif_rotated", "exif.jpg"),                                  # 5
      entry("tall", "tall.png"),
      text_only("text_only"),
      entry("multi_turn", "sub/png.png", MULTI_TURN),
      entry(12345, "jpeg.jpg"),                                           # An int id.
      entry("truncated_png", "truncated.png"),                            # 10
      entry("truncated_jpeg", "truncated.jpg"),
      entry("zero_bytes", "zero.jpg"),
      entry("text_as_jpg", "text.jpg"),
      entry("huge_header", "huge.png"),
      "a string, not a record",                                           # 15: malformed.
      {"image": "sub/png.png", "conversations": turns()},                 # 16: no id.
      {"id": "no_turns", "image": "sub/png.png"},
      entry("int_value", conversations=[{"from": "human", "value": 7}]),
      entry("missing", "nowhere.jpg"),
      entry("tag_without_image", conversations=turns()),                  # 20
      entry("image_without_tag", "sub/png.png", turns("What is shown?")),
      entry("empty_answer", "sub/png.png", turns(answer="  ")),
      entry("png", "jpeg.jpg"),                                           # Duplicate of 0.
      entry("missing", "jpeg.jpg"),                                       # Of a rejected one.
      entry("traversal", "../../etc/passwd"),                             # 25
      entry("absolute", str(outside / "secret.png")),
      entry("symlink", "link.png"),
  ]
  (root / "data.json").write_text(json.dumps(records))
  return str(root / "data.json"), str(folder)


def _exif(orientation: int) -> bytes:
  exif = Image.Exif()
  exif[ORIENTATION] = orientation
  return exif.tobytes()


def records_by_id(out_dir) -> dict[str, dict[str, dict]]:
  """split → id → record, ids and conversations decoded."""
  result = {}
  for split, source in ingest.load(out_dir).items():
    result[split] = {}
    for i in range(len(source)):
      record = dict(source[i])
      record["id"] = record["id"].decode()
      record["conversations"] = json.loads(record["conversations"])
      result[split][record["id"]] = record
  return result


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixed")
  json_path, folder = write_mixed(root)
  report = ingest.ingest(json_path, folder, root / "out", workers=1)
  return root, report, records_by_id(root / "out")["train"]


def test_every_reason_is_counted_exactly(mixed):
  _, report, _ = mixed
  assert report["rejected"] == EXPECTED_REJECTED
  assert report["first_ids"] == EXPECTED_FIRST_IDS
  assert report["total"] == 28 and report["accepted"] == len(ACCEPTED)
  assert report["accepted"] + sum(report["rejected"].values()) == report["total"]
  assert report["splits"] == {"train": len(ACCEPTED)}
  assert set(report["rejected"]) <= set(llava_json.REASONS)
  for reason, ids in report["first_ids"].items():
    assert len(report["first_details"][reason]) == len(ids)


def test_report_json_is_written_beside_the_dataset(mixed):
  root, report, _ = mixed
  assert json.loads((root / "out" / ingest.REPORT).read_text()) == report
  assert report["dataset"] == ingest.DATASET
  assert sorted(os.listdir(root / "out")) == sorted([ingest.REPORT, "llava_json"])


def test_accepted_records_hold_the_decoded_pixels(mixed):
  root, _, records = mixed
  assert set(records) == ACCEPTED
  folder = root / "images"
  # The inputs are what their ids say.
  modes = {name: Image.open(folder / name).mode
           for name in ("cmyk.jpg", "png16.png", "palette.png", "exif.jpg")}
  assert modes == {"cmyk.jpg": "CMYK", "png16.png": "I;16", "palette.png": "P",
                   "exif.jpg": "RGB"}
  assert Image.open(folder / "exif.jpg").getexif()[ORIENTATION] == 6
  for record_id, name in [("png", "sub/png.png"), ("jpeg", "jpeg.jpg"), ("cmyk", "cmyk.jpg"),
                          ("exif_rotated", "exif.jpg"), ("12345", "jpeg.jpg")]:
    np.testing.assert_array_equal(records[record_id]["image"], images.load_image(folder / name))
  np.testing.assert_array_equal(records["png"]["image"], noise(0, 8, 12))  # PNG: lossless.
  assert np.abs(records["cmyk"]["image"].astype(int) - (255, 0, 0)).max() <= 3
  assert records["exif_rotated"]["image"].shape == (48, 32, 3)
  grey = np.array([0, 1, 1, 2, 128, 255], np.uint8)
  np.testing.assert_array_equal(records["png16"]["image"], np.repeat(grey[None, :, None], 3, 2))
  np.testing.assert_array_equal(records["palette"]["image"][0],
                                [(255, 0, 0), images.BACKGROUND, (0, 0, 255), images.BACKGROUND])
  assert records["tall"]["image"].shape == (5000, 1, 3) and (records["tall"]["image"] == 9).all()
  for record in records.values():
    assert record["image"].dtype == np.uint8
    assert record["image"].shape == (record["height"], record["width"], 3)
    assert record["has_image"] == (record["id"] != "text_only")


def test_text_only_records_get_a_placeholder(mixed):
  _, _, records = mixed
  record = records["text_only"]
  assert not record["has_image"] and (record["width"], record["height"]) == (1, 1)
  np.testing.assert_array_equal(record["image"], [[images.BACKGROUND]])


def test_conversations_are_stored_as_given(mixed):
  _, _, records = mixed
  assert records["multi_turn"]["conversations"] == MULTI_TURN
  assert records["text_only"]["conversations"] == turns("Say hello.", "Hello.")
  assert records["png"]["conversations"] == turns()


def test_same_input_gives_the_same_dataset_and_report(mixed, tmp_path, monkeypatch):
  """Rebuilt with two spawned workers instead of in-process decoding."""
  root, report, records = mixed
  monkeypatch.setattr(llava_json, "_MIN_POOL_JOBS", 1)
  again = ingest.ingest(root / "data.json", root / "images", tmp_path, workers=2)
  assert again == report
  rebuilt = records_by_id(tmp_path)["train"]
  assert rebuilt.keys() == records.keys()
  for record_id, record in records.items():
    for key, value in record.items():
      np.testing.assert_array_equal(rebuilt[record_id][key], value, err_msg=f"{record_id} {key}")
  shard = "llava_json-train.array_record-00000-of-00001"
  assert filecmp.cmp(root / "out" / ingest.DATASET / shard, tmp_path / ingest.DATASET / shard,
                     shallow=False)


def test_hostile_values_are_rejected_not_fatal(tmp_path):
  """Values json.loads accepts but no file system or UTF-8 encoder does."""
  records = [
      entry("\ud800"),                                    # A lone surrogate: no UTF-8.
      entry(True), entry(""), entry(1.5), entry(None),
      entry("nul", "a\0b.png"),
      entry("list", ["a.png", "b.png"]),                  # Two images, one <image> tag.
      entry("surrogate_path", "\ud800.png"),
      entry("bad_text", conversations=turns("<image>\n\udfff")),
      entry("bad_role", conversations=[{"from": "\ud800", "value": "Hi"}]),
      entry(10**30, "nowhere.png"),                        # A big int id is fine.
      entry("dot", "."),                                  # The image folder itself.
  ]
  (tmp_path / "data.json").write_text(json.dumps(records))
  report = ingest.ingest(tmp_path / "data.json", tmp_path, tmp_path / "out")
  assert report["rejected"] == {"malformed": 7, "invalid_text": 1, "bad_role": 1,
                                "image_missing": 1, "image_unreadable": 1,
                                "image_without_tag": 1}
  assert report["first_ids"]["malformed"] == ["#0", "#1", "#2", "#3", "#4", "nul",
                                              "surrogate_path"]
  assert report["first_ids"]["image_missing"] == [str(10**30)]
  assert report["dataset"] is None


# 1,000 records ----------------------------------------------------------------------------------

BROKEN_KINDS = ("image_corrupt", "image_empty", "image_unidentified", "image_missing",
                "image_outside_root", "tag_without_image", "image_without_tag", "empty_answer",
                "malformed", "duplicate_id")


def test_a_thousand_records_with_a_tenth_broken(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for k in range(20):
    (folder / f"good{k}.png").write_bytes(encode(Image.fromarray(noise(k, 24, 32)), "PNG"))
  (folder / "truncated.png").write_bytes((folder / "good0.png").read_bytes()[:200])
  (folder / "zero.png").write_bytes(b"")
  (folder / "text.jpg").write_bytes(b"404 Not Found\n")
  broken = {
      "image_corrupt": lambda i: entry(f"r{i}", "truncated.png"),
      "image_empty": lambda i: entry(f"r{i}", "zero.png"),
      "image_unidentified": lambda i: entry(f"r{i}", "text.jpg"),
      "image_missing": lambda i: entry(f"r{i}", f"gone{i}.png"),
      "image_outside_root": lambda i: entry(f"r{i}", "../good0.png"),
      "tag_without_image": lambda i: entry(f"r{i}"),
      "image_without_tag": lambda i: entry(f"r{i}", "good0.png", turns("What?")),
      "empty_answer": lambda i: entry(f"r{i}", "good0.png", turns(answer="")),
      "malformed": lambda i: [f"r{i}"],
      "duplicate_id": lambda i: entry(f"r{i - 1}", "good0.png"),
  }
  assert tuple(broken) == BROKEN_KINDS
  records, expected_first = [], {kind: [] for kind in BROKEN_KINDS}
  for i in range(1000):
    if i % 10 == 7:  # 100 broken records, 10 of each kind, the kinds interleaved.
      kind = BROKEN_KINDS[(i // 10) % len(BROKEN_KINDS)]
      records.append(broken[kind](i))
      expected_first[kind].append(f"r{i - 1}" if kind == "duplicate_id" else
                                  f"#{i}" if kind == "malformed" else f"r{i}")
    elif i % 10 == 5:
      records.append(text_only(f"r{i}"))
    else:
      records.append(entry(f"r{i}", f"good{i % 20}.png"))
  (tmp_path / "data.json").write_text(json.dumps(records))
  start = time.perf_counter()
  report = ingest.ingest(tmp_path / "data.json", folder, tmp_path / "out", workers=2)
  seconds = time.perf_counter() - start
  print(f"\n1,000 records (900 accepted) ingested in {seconds:.1f} s with 2 workers")
  assert report["total"] == 1000 and report["accepted"] == 900
  assert report["rejected"] == {kind: 10 for kind in BROKEN_KINDS}
  assert report["first_ids"] == expected_first
  sources = ingest.load(tmp_path / "out")
  assert len(sources["train"]) == 900
  assert seconds < 30


# Splits, command line, whole-input errors --------------------------------------------------------

def test_validation_split_is_chosen_by_id_hash(tmp_path):
  ids = [f"q{i}" for i in range(60)]
  (tmp_path / "small.json").write_text(json.dumps([text_only(i) for i in ids[:40]]))
  (tmp_path / "large.json").write_text(json.dumps([text_only(i) for i in ids]))
  splits = {}
  for name in ("small", "large"):
    report = ingest.ingest(tmp_path / f"{name}.json", tmp_path, tmp_path / name, val_fraction=0.25)
    splits[name] = {split: set(records) for split, records in
                    records_by_id(tmp_path / name).items()}
    assert sum(report["splits"].values()) == report["accepted"] == report["total"]
  expected = {i for i in ids if llava_json.split_of(i, 0.25) == "validation"}
  assert splits["large"]["validation"] == expected and 5 <= len(expected) <= 25
  # A record keeps its split when the JSON grows.
  assert splits["small"]["validation"] == expected & set(ids[:40])


def test_all_rejected_still_reports_every_record(tmp_path):
  (tmp_path / "data.json").write_text(json.dumps([entry(f"m{i}", f"m{i}.png") for i in range(9)]))
  assert {llava_json.split_of(f"m{i}", 0.5) for i in range(9)} == {"train", "validation"}
  report = ingest.ingest(tmp_path / "data.json", tmp_path, tmp_path / "out", val_fraction=0.5)
  # Train comes first and is empty: the validation records are judged anyway.
  assert report["rejected"] == {"image_missing": 9} and report["accepted"] == 0
  assert report["dataset"] is None
  assert json.loads((tmp_path / "out" / ingest.REPORT).read_text()) == report
  with pytest.raises(errors.InputError, match="llava_json/2.0.0 does not exist"):
    ingest.load(tmp_path / "out")


def test_command_line(tmp_path, capsys):
  images_dir = tmp_path / "images"
  images_dir.mkdir()
  (images_dir / "a.png").write_bytes(encode(Image.new("RGB", (4, 3), (1, 2, 3)), "PNG"))
  records = [entry("a", "a.png"), entry("b", "b.png"), text_only("c")]
  (tmp_path / "data.json").write_text(json.dumps(records))
  args = ["--json", str(tmp_path / "data.json"), "--images", str(images_dir),
          "--out", str(tmp_path / "out"), "--workers", "1"]
  assert ingest.main(args) == 0
  printed = capsys.readouterr().out
  assert "2 of 3 records accepted" in printed and "image_missing" in printed
  report = json.loads((tmp_path / "out" / ingest.REPORT).read_text())
  assert report["rejected"] == {"image_missing": 1} and report["first_ids"] == {
      "image_missing": ["b"]}
  assert {r["id"] for r in records_by_id(tmp_path / "out")["train"].values()} == {"a", "c"}
  # An earlier ingestion is kept unless --overwrite.
  assert ingest.main(args) == 2
  assert "already holds" in capsys.readouterr().err
  assert ingest.main(args + ["--overwrite"]) == 0


def test_unusable_inputs_fail_before_writing_anything(tmp_path, capsys):
  (tmp_path / "object.json").write_text('{"id": "a"}')
  (tmp_path / "broken.json").write_text('[{"id": "a"')
  for name, message in [("object.json", "holds a dict"), ("broken.json", "not valid JSON"),
                        ("absent.json", "no such file")]:
    assert ingest.main(["--json", str(tmp_path / name), "--images", str(tmp_path),
                        "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
  (tmp_path / "empty.json").write_text("[]")
  with pytest.raises(llava_json.InputError, match="empty.json — holds no records"):
    ingest.ingest(tmp_path / "empty.json", tmp_path, tmp_path / "out")
  (tmp_path / "one.json").write_text('[{"id": "a"}]')
  with pytest.raises(llava_json.InputError, match="nowhere — no such folder"):
    ingest.ingest(tmp_path / "one.json", tmp_path / "nowhere", tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_records_of_several_images_keep_them_in_order(tmp_path):
  """LLaVA-OneVision's format: "image" a list, as many `<image>` tags anywhere in the human
  turns; a count that differs from the tags, an empty list or a missing file is rejected with
  its reason."""
  for i in range(3):
    Image.fromarray(noise(i, 8 + i, 6)).save(tmp_path / f"{i}.png")
  two_turns = turns("<image>\nThe first.", "Seen.") + turns("And <image> the second?", "Yes.")
  records = [
      entry("two", ["0.png", "1.png"], two_turns),
      entry("three", ["2.png", "0.png", "1.png"], turns("<image><image>\nWhich? <image>", "One.")),
      entry("one_in_a_list", ["1.png"]),
      entry("fewer_tags", ["0.png", "1.png"]),
      entry("more_tags", ["0.png"], turns("<image> and <image>?", "No.")),
      entry("empty_list", []),
      entry("a_missing_one", ["0.png", "absent.png"], two_turns),
      entry("too_many", [f"{i % 3}.png" for i in range(llava_json.MAX_IMAGES + 1)]),
  ]
  (tmp_path / "data.json").write_text(json.dumps(records))
  report = ingest.ingest(tmp_path / "data.json", tmp_path, tmp_path / "out")
  assert report["rejected"] == {"image_without_tag": 1, "tag_without_image": 1, "malformed": 1,
                                "image_missing": 1, "too_many_images": 1}
  source = ingest.load(tmp_path / "out")["train"]
  got = {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}
  assert sorted(got) == ["one_in_a_list", "three", "two"]
  for record_id, names in (("two", [0, 1]), ("three", [2, 0, 1]), ("one_in_a_list", [1])):
    stored = [got[record_id]["image"]] + list(got[record_id]["extra_images"])
    assert len(stored) == len(names)
    for pixels, i in zip(stored, names):
      np.testing.assert_array_equal(pixels, noise(i, 8 + i, 6))
