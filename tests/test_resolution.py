"""Resolution policies against transformers' reference code on hundreds of random image sizes,
extremes included."""
import math
import types

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import image_processing_utils
from transformers.image_processing_utils import SizeDict
from transformers.image_utils import PILImageResampling
from transformers.models.got_ocr2 import image_processing_pil_got_ocr2 as got_ocr2
from transformers.models.llava_onevision import image_processing_pil_llava_onevision
from transformers.models.llava_onevision import modeling_llava_onevision
from transformers.models.llava_onevision import processing_llava_onevision
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as qwen2_vl

from mmjax.data import resolution

EXTREMES = [(1, 1), (1, 200), (200, 1), (1, 201), (3, 700), (27, 28), (13, 13), (14, 14),
            (28, 28), (56, 56), (447, 448), (448, 448), (449, 448), (384, 1152), (1000, 1),
            (10_000, 50), (50, 10_000), (8000, 8000), (20_000, 300), (333, 333)]
LLAVA_NEXT_PINPOINTS = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]


def random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
  """Log-uniform sides from 1 to 8000 px, plus the extremes."""
  rng = np.random.default_rng(seed)
  sides = np.exp(rng.uniform(0, math.log(8000), (n, 2))).astype(int)
  return EXTREMES + [tuple(map(int, s)) for s in sides]


SIZES = random_sizes(400, 0)


@pytest.mark.parametrize("min_pixels,max_pixels", [(56 * 56, 28 * 28 * 1280),
                                                   (100 * 28 * 28, 16384 * 28 * 28)])
def test_smart_resize_matches_qwen2_vl(min_pixels, max_pixels):
  for h, w in SIZES:
    try:
      expected = qwen2_vl.smart_resize(h, w, 28, min_pixels, max_pixels)
    except ValueError:
      with pytest.raises(ValueError, match="Aspect ratio"):
        resolution.smart_resize(h, w, 28, min_pixels, max_pixels)
      continue
    got = resolution.smart_resize(h, w, 28, min_pixels, max_pixels)
    assert got == tuple(expected), (h, w)
    assert resolution.qwen2vl_num_tokens(h, w, min_pixels=min_pixels,
                                         max_pixels=max_pixels) == got[0] * got[1] // 28**2


@pytest.mark.parametrize("tile,min_num,max_num", [(448, 1, 12), (448, 1, 40), (336, 2, 6)])
def test_internvl_grid_matches_got_ocr2(tile, min_num, max_num):
  for h, w in SIZES:
    expected = got_ocr2.get_optimal_tiled_canvas((h, w), (tile, tile), min_num, max_num)
    assert resolution.internvl_grid(h, w, tile, min_num, max_num) == tuple(expected), (h, w)


def test_internvl_grid_tie_break():
  # METHODS §3.1's worked example, and a tie (1:1 image on 1×1 vs 2×2) decided by the area rule.
  assert resolution.internvl_grid(1300, 800) == (2, 3)
  assert resolution.internvl_grid(300, 300) == (1, 1)
  assert resolution.internvl_grid(700, 700) == (2, 2)
  assert resolution.internvl_grid(1000, 1000) == (3, 3)


@pytest.mark.parametrize("candidates", [list(resolution.ONEVISION_PINPOINTS),
                                        LLAVA_NEXT_PINPOINTS])
def test_select_best_resolution_and_grid_match_llava(candidates):
  for h, w in SIZES:
    expected = image_processing_utils.select_best_resolution((h, w), candidates)
    assert resolution.select_best_resolution(h, w, candidates) == tuple(expected), (h, w)
    crop = 336 if candidates is LLAVA_NEXT_PINPOINTS else 384
    assert resolution.anyres_grid_shape(h, w, candidates, crop) == tuple(
        modeling_llava_onevision.get_anyres_image_grid_shape((h, w), candidates, crop))
    assert 1 + math.prod(resolution.anyres_grid_shape(h, w, candidates, crop)) == (
        modeling_llava_onevision.image_size_to_num_patches((h, w), candidates, crop))


def test_unpad_matches_llava_onevision():
  rng = np.random.default_rng(1)
  for h, w in SIZES:
    rows, cols = (int(x) for x in rng.integers(1, 5, 2))
    features = rng.normal(size=(rows * 27, cols * 27, 2)).astype(np.float32)
    expected = modeling_llava_onevision.unpad_image(
        torch.from_numpy(features).permute(2, 0, 1), (h, w)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(resolution.unpad(features, h, w), expected)


def test_onevision_num_tokens_match_processor():
  processor = types.SimpleNamespace(
      image_processor=types.SimpleNamespace(
          image_grid_pinpoints=[list(p) for p in resolution.ONEVISION_PINPOINTS]),
      num_image_tokens=729, vision_aspect_ratio="anyres_max_9")
  processor._get_unpadded_features = types.MethodType(
      processing_llava_onevision.LlavaOnevisionProcessor._get_unpadded_features, processor)
  for h, w in SIZES:
    expected = processing_llava_onevision.LlavaOnevisionProcessor._get_number_of_features(
        processor, h, w, 384, 384)
    assert resolution.onevision_num_tokens(h, w) == expected, (h, w)


def test_onevision_num_tokens_match_feature_packing():
  """The processor's count and the model's packing agree with ours on the number of tokens (the
  packing allocates the crops' features, so fewer sizes)."""
  grid, crop = 27, 384
  model = types.SimpleNamespace(config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=crop, patch_size=crop // grid),
      image_grid_pinpoints=[list(p) for p in resolution.ONEVISION_PINPOINTS]))
  for h, w in SIZES[:20] + SIZES[-20:]:
    rows, cols = resolution.anyres_grid_shape(h, w, resolution.ONEVISION_PINPOINTS, crop)
    features = torch.zeros(1 + rows * cols, grid * grid, 1)
    _, lengths = modeling_llava_onevision.LlavaOnevisionModel.pack_image_features(
        model, [features], torch.tensor([[h, w]]), image_newline=torch.zeros(1))
    assert resolution.onevision_num_tokens(h, w) == int(lengths[0]), (h, w)


@pytest.mark.parametrize("crop,grid,pinpoints,max_crops", [
    (384, 27, resolution.ONEVISION_PINPOINTS, 9),  # OneVision's own setting.
    (224, 7, tuple((224 * r, 224 * c) for r in (1, 2) for c in (1, 2)), 4),  # Our CPU sizes.
])
def test_onevision_plan_equals_feature_packing(crop, grid, pinpoints, max_crops):
  """The static gather plan applied to random crop features gives the reference's packed
  features: unpadded, bilinearly shrunk to the budget, a newline after every row, base first."""
  model = types.SimpleNamespace(config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=crop, patch_size=crop // grid),
      image_grid_pinpoints=[list(p) for p in pinpoints]))
  rng = np.random.default_rng(3)
  budget = resolution.onevision_plan_budget(pinpoints, crop, grid, max_crops)
  for h, w in SIZES[:30] + SIZES[-30:]:
    rows, cols = resolution.anyres_grid_shape(h, w, pinpoints, crop)
    features = rng.normal(size=(1 + rows * cols, grid * grid, 3)).astype(np.float32)
    newline = rng.normal(size=3).astype(np.float32)
    expected, _ = modeling_llava_onevision.LlavaOnevisionModel.pack_image_features(
        model, [torch.from_numpy(features)], torch.tensor([[h, w]]),
        image_newline=torch.from_numpy(newline), vision_aspect_ratio=f"anyres_max_{max_crops}")
    index, weight, kind = resolution.onevision_plan(h, w, pinpoints, crop, grid, max_crops)
    flat = features.reshape(-1, 3)
    mapped = np.einsum("tk,tkc->tc", weight, flat[index])
    mapped[kind == 2] = newline
    got = np.concatenate([features[0], mapped])
    np.testing.assert_allclose(got, expected[0].numpy(), atol=1e-6, err_msg=str((h, w)))
    assert len(kind) <= budget


def _hd_transform_reference(image: np.ndarray, hd_num: int, tile: int) -> np.ndarray:
  """The authors' `HD_transform` / `padding_336` (InternLM-XComposer ixc_utils.py), transcribed
  with PIL (torchvision's resize and pad of a PIL image are PIL's bilinear resize and a fill)."""
  img = Image.fromarray(image)
  width, height = img.size
  trans = False
  if width < height:
    img = img.transpose(Image.TRANSPOSE)
    trans = True
    width, height = img.size
  ratio = width / height
  scale = 1
  while scale * np.ceil(scale / ratio) <= hd_num:
    scale += 1
  scale -= 1
  new_w = int(scale * tile)
  new_h = int(new_w / ratio)
  img = img.resize((new_w, new_h), Image.BILINEAR)
  tar = int(np.ceil(new_h / tile) * tile)
  top = int((tar - new_h) / 2)
  padded = Image.new("RGB", (new_w, tar), (255, 255, 255))
  padded.paste(img, (0, top))
  if trans:
    padded = padded.transpose(Image.TRANSPOSE)
  return np.asarray(padded)


def _xcomposer_layout_reference(features, rows, cols, glb_gn, sub_gn):
  """The authors' 4KHD vision-tower layout of one image (build_mlp.py `CLIPVisionTower.forward`,
  after the ViT), transcribed: features [1 + rows·cols, N, C] of the global view and the tiles."""
  n, c = features.shape[1:]
  h = int(math.sqrt(n))
  glb = features[:1].reshape(1, h // 2, 2, h // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(
      1, h // 2, h // 2, 4 * c)
  glb = torch.cat([glb, sub_gn.repeat(1, h // 2, 1, 1)], dim=2).reshape(1, -1, 4 * c)
  b = rows * cols
  sub = features[1:1 + b].reshape(b, h // 2, 2, h // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(
      b, -1, 4 * c)
  sub = sub.reshape(1, rows, cols, h // 2, h // 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(
      1, rows * h // 2, cols * h // 2, 4 * c)
  sub = torch.cat([sub, sub_gn.repeat(1, rows * h // 2, 1, 1)], dim=2).reshape(1, -1, 4 * c)
  return torch.cat([glb, glb_gn, sub], dim=1)[0]


def test_xcomposer_canvas_equals_hd_transform():
  rng = np.random.default_rng(4)
  compared = 0
  for hd_num in (1, 4, 25):
    for h, w in [s for s in SIZES if max(s) <= 3000 and min(s) >= 2][:40] + [(336, 336)]:
      (new_h, new_w), canvas = resolution.xcomposer_hd_size(h, w, hd_num, 336)
      assert canvas[0] % 336 == canvas[1] % 336 == 0
      assert canvas[0] // 336 * (canvas[1] // 336) <= hd_num
      if h * w <= 600 * 600:  # Pixels for the smaller images (the geometry above for all).
        image = rng.integers(0, 256, (h, w, 3), np.uint8)
        ours = resolution.xcomposer_hd_image(image, hd_num, 336)
        assert ours.shape == (*canvas, 3)
        if min(new_h, new_w) > 1:  # The reference resizes a 1:>336 image to 0 px and fails.
          np.testing.assert_array_equal(ours, _hd_transform_reference(image, hd_num, 336),
                                        str((h, w)))
          compared += 1
  # (hd_num, size) pairs compared pixel by pixel, of 3 × 41: the rest are larger than 600² or
  # 1:>336 images, whose geometry alone is checked.
  assert compared == 114
  with pytest.raises(ValueError, match="hd_num"):
    resolution.xcomposer_hd_size(10, 10, 0)


def test_bicubic_matrix_equals_torch_interpolate():
  rng = np.random.default_rng(5)
  for size_in, size_out in [(672, 336), (1008, 336), (336, 336), (100, 336), (37, 5)]:
    x = rng.normal(size=(size_in, 7)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(x.T))[None, :, :, None], size=(size_out, 1),
        mode="bicubic")[0, :, :, 0].numpy().T
    np.testing.assert_allclose(resolution.bicubic_matrix(size_in, size_out) @ x, expected,
                               atol=2e-5)


def test_xcomposer_plan_equals_the_authors_layout():
  rng = np.random.default_rng(6)
  grid = 12
  for rows, cols in [(1, 1), (1, 3), (3, 1), (2, 2), (5, 5), (1, 25), (2, 7)]:
    features = rng.normal(size=(1 + rows * cols, (2 * grid) ** 2, 2)).astype(np.float32)
    glb_gn, sub_gn = rng.normal(size=(2, 8)).astype(np.float32)
    expected = _xcomposer_layout_reference(
        torch.from_numpy(features), rows, cols, torch.from_numpy(glb_gn)[None, None],
        torch.from_numpy(sub_gn)[None, None, None]).numpy()
    merged = features.reshape(-1, grid, 2, grid, 2, 2).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 8)
    index, kind = resolution.xcomposer_plan(rows, cols, grid)
    got = merged[index]
    got[kind == 2], got[kind == 3] = sub_gn, glb_gn
    np.testing.assert_array_equal(got, expected)
    assert len(kind) == (rows * cols + 1) * grid ** 2 + 1 + (rows + 1) * grid


def test_crops_and_tiles_pixel_exact():
  rng = np.random.default_rng(2)
  onevision = image_processing_pil_llava_onevision.LlavaOnevisionImageProcessorPil()
  got = got_ocr2.GotOcr2ImageProcessorPil()
  for h, w in [(300, 700), (901, 260), (384, 384), (50, 1700)]:
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    # LLaVA-NeXT's five 336-px canvases and OneVision's 36 of 384-px crops.
    for pinpoints, crop in ((LLAVA_NEXT_PINPOINTS, 336),
                            (list(resolution.ONEVISION_PINPOINTS), 384)):
      expected = onevision.get_image_patches(
          image.transpose(2, 0, 1), pinpoints, size=(crop, crop), patch_size=crop,
          resample=PILImageResampling.BICUBIC)
      np.testing.assert_array_equal(resolution.anyres_crops(image, pinpoints, crop),
                                    np.stack(expected).transpose(0, 2, 3, 1), str((h, w, crop)))
    expected = got.crop_image_to_patches(image.transpose(2, 0, 1), 1, 12, True,
                                         SizeDict(height=448, width=448),
                                         PILImageResampling.BICUBIC)
    tiles = resolution.internvl_tiles(image, 448, 1, 12)
    np.testing.assert_array_equal(tiles, np.stack(expected).transpose(0, 2, 3, 1))
    assert resolution.internvl_num_tokens(h, w) == 256 * len(tiles)


def test_bad_sizes_are_named():
  with pytest.raises(ValueError, match="positive"):
    resolution.smart_resize(0, 10)
  with pytest.raises(ValueError, match="min_num"):
    resolution.internvl_grid(10, 10, min_num=5, max_num=2)
  with pytest.raises(ValueError, match="at least one candidate"):
    resolution.select_best_resolution(10, 10, [])
  with pytest.raises(ValueError, match="multiple of the crop"):
    resolution.anyres_crops(np.zeros((10, 10, 3), np.uint8), [(400, 400)], 384)


def _oryx_resize_images_reference(img: Image.Image, patch_size: int, base_size: int,
                                  max_res: int = 1536, min_res: int = 0) -> Image.Image:
  """The authors' `resize_images` (Oryx mm_utils.py) with their inference settings (MAXRES
  1536, MINRES 0, PAD2STRIDE), transcribed; PIL's size is (width, height), which the authors
  name (h, w)."""
  w, h = img.size
  if base_size == 0:
    if w * h > max_res * max_res:
      scale = math.sqrt(max_res * max_res / (w * h))
    elif w * h < min_res * min_res:
      scale = math.sqrt(min_res * min_res / (w * h))
    else:
      scale = None
  else:
    scale = math.sqrt(base_size * base_size / (w * h))
  if scale is not None:
    return img.resize((int(w * scale / patch_size) * patch_size,
                       int(h * scale / patch_size) * patch_size))
  new_w = w if w % patch_size == 0 else (w // patch_size + 1) * patch_size
  new_h = h if h % patch_size == 0 else (h // patch_size + 1) * patch_size
  padded = Image.new("RGB", (new_w, new_h), (127, 127, 127))
  padded.paste(img, ((new_w - w) // 2, (new_h - h) // 2))
  return padded


def _oryx_views_reference(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The authors' `process_anyres_highres_image_genli` (LOWRES_RESIZE=384x32,
  HIGHRES_BASE=0x32), transcribed up to the pixel normalisation."""
  img = Image.fromarray(image)
  w, h = img.size
  if w < 32 and h < 32:
    ratio = 64 / min(w, h)
    img = img.resize((int(w * ratio), int(h * ratio)))
  elif w < 32:
    ratio = 64 / w
    img = img.resize((int(w * ratio), int(h * ratio)))
  elif h < 32:
    ratio = 64 / h
    img = img.resize((int(w * ratio), int(h * ratio)))
  high = _oryx_resize_images_reference(img, 32, 0)
  low = _oryx_resize_images_reference(img, 32, 384)
  return np.asarray(low), np.asarray(high)


def test_oryx_views_equal_the_authors_preprocessing():
  rng = np.random.default_rng(7)
  sizes = [s for s in SIZES if max(s) <= 2500] + [(10, 20), (31, 700), (700, 31), (1536, 1536),
                                                  (1537, 1536), (2000, 1200), (64, 64)]
  compared = 0
  for h, w in sizes:
    low_h, low_w, _ = resolution.oryx_size(*resolution._oryx_min_side(h, w), 32, 384)
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    if compared < 60 and max(h, w) <= 2500:  # Pixels for some (sizes for all, below).
      low, high = resolution.oryx_views(image)
      assert low.shape[:2] == (low_h, low_w) and low_h % 32 == low_w % 32 == 0
      assert high.shape[0] % 32 == high.shape[1] % 32 == 0
      ref_h, ref_w = resolution._oryx_min_side(h, w)
      if min(int(ref_h * 384 / math.sqrt(ref_h * ref_w) / 32),
             int(ref_w * 384 / math.sqrt(ref_h * ref_w) / 32)) == 0:
        continue  # The reference resizes the low view to 0 px and fails; ours keeps 32.
      ref_low, ref_high = _oryx_views_reference(image)
      np.testing.assert_array_equal(low, ref_low, str((h, w)))
      np.testing.assert_array_equal(high, ref_high, str((h, w)))
      compared += 1
  assert compared == 60  # Images compared pixel by pixel with the reference.
  # The geometry of every size: the native view keeps or pads small images, shrinks large ones.
  for h, w in SIZES:
    mh, mw = resolution._oryx_min_side(h, w)
    high_h, high_w, padded = resolution.oryx_size(mh, mw, 32, 0, 1536)
    assert padded == (mh * mw <= 1536 * 1536)
    if padded:
      assert 0 <= high_h - mh < 32 and 0 <= high_w - mw < 32
    else:  # Shrunk to the area, unless a side had to be kept at one multiple.
      assert high_h * high_w <= 1536 * 1536 or min(high_h, high_w) == 32


def test_oryx_position_plan_equals_torch_interpolate():
  """Applied to a table, the plan is the authors' `rescale_positional_embedding`."""
  rng = np.random.default_rng(8)
  table = 12
  pos = rng.normal(size=(table * table, 5)).astype(np.float32)
  for rows, cols in [(12, 12), (3, 5), (24, 7), (1, 1), (12, 30), (96, 96), (7, 12)]:
    index, weight = resolution.oryx_position_plan(rows, cols, table)
    ours = np.einsum("nk,nkd->nd", weight, pos[index])
    grid = torch.from_numpy(pos.T.copy()).view(1, 5, table, table)
    expected = pos if (rows, cols) == (table, table) else torch.nn.functional.interpolate(
        grid, (rows, cols), mode="bilinear", align_corners=False).view(5, -1).T.numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-6, err_msg=str((rows, cols)))


def test_oryx_layout_and_token_count():
  index, kind = resolution.oryx_layout((2, 3), (1, 2))
  names = [resolution.ORYX_KINDS[k] for k in kind]
  assert names == (["begin"] + ["token"] * 3 + ["newline"] + ["token"] * 3 + ["newline"]
                   + ["separator"] + ["token"] * 2 + ["newline"] + ["end"])
  assert index[kind == 1].tolist() == list(range(8))
  for h, w in [s for s in SIZES if max(s) / min(s) <= 3]:
    low = resolution.oryx_size(h, w, 32, 384)
    high = resolution.oryx_size(h, w, 32, 0, 1536)
    if min(h, w) >= 32:
      expected = 3 + sum(a // 16 * (b // 16 + 1) for a, b, _ in (low, high))
      assert resolution.oryx_num_tokens(h, w) == expected
