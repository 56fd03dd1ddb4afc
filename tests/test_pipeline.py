"""Input pipeline: formatting, static shapes, deterministic resume, workers, global sharding."""
import json
import multiprocessing
import os
import signal
import time

import jax
import numpy as np
import pytest
from transformers.models.llava import image_processing_pil_llava

from mmjax import sharding
from mmjax.data import pipeline
from mmjax.data import resolution
from mmjax.data import tokenizer
from mmjax.data.datasets import finedetail
from mmjax.data.datasets import questions

TOK = tokenizer.ByteTokenizer()
N_IMAGE = 16


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return finedetail.prepare("tiny", str(tmp_path_factory.mktemp("tfds"))).as_data_source()["train"]


def _format(task="vqa", max_len=640, sizes=(32, 64)):
  return pipeline.FormatExample(task=task, template="vicuna_v1", tokenizer=TOK,
                                num_image_tokens=N_IMAGE, max_len=max_len,
                                policy=pipeline.FixedResolution(sizes))


def _batches(loader, n, state=None):
  it = iter(loader)
  if state is not None:
    it.set_state(state)
  return [next(it) for _ in range(n)], it


def test_rows_have_static_shapes_and_answer_only_loss(source):
  batches, _ = _batches(pipeline.make_loader(source, _format(), global_batch_size=4, seed=0), 2)
  for b in batches:
    assert b["tokens"].shape == b["targets"].shape == b["loss_mask"].shape == (4, 640)
    assert b["images"].shape == (4, 32, 32, 3) and b["images_hi"].shape == (4, 64, 64, 3)
    assert ((b["tokens"] == TOK.image_id).sum(axis=1) == N_IMAGE).all()
    for row in range(4):
      answer_ids = b["targets"][row][b["loss_mask"][row] == 1]
      text = TOK.decode(answer_ids, skip_special_tokens=False)
      assert "USER" not in text and "ASSISTANT" not in text and text.endswith("</s>")


def test_vqa_conversation_holds_every_question_and_answer(source):
  record = source[0]
  rng = np.random.default_rng(0)
  turns = pipeline.conversation_of(record, "vqa", rng)
  answers = [t["value"] for t in turns[1::2]]
  assert sorted(answers) == sorted(a.decode() for a in record["qa"]["answer"])
  assert turns[0]["value"].startswith(tokenizer.IMAGE_TAG + "\n")
  caption = pipeline.conversation_of(record, "caption", rng)
  assert caption[1]["value"] == record["caption"].decode()
  with pytest.raises(ValueError, match="valid"):
    pipeline.conversation_of(record, "qa", rng)


def test_vqa_conversation_keeps_only_the_kinds_asked_for(source):
  record = source[0]
  kinds = [k.decode() for k in record["qa"]["kind"]]
  chosen = kinds[0]
  turns = pipeline.conversation_of(record, "vqa", np.random.default_rng(0), kinds=(chosen,))
  expected = [a.decode() for a, k in zip(record["qa"]["answer"], kinds) if k == chosen]
  assert sorted(t["value"] for t in turns[1::2]) == sorted(expected)
  assert turns[0]["value"].startswith(tokenizer.IMAGE_TAG + "\n")
  # A record without a question of those kinds makes an empty conversation: the row is dropped.
  record, absent = next((r, k) for r in (source[i] for i in range(len(source)))
                        for k in questions.ALL_KINDS if k.encode() not in r["qa"]["kind"])
  assert pipeline.conversation_of(record, "vqa", np.random.default_rng(0), kinds=(absent,)) == []
  fmt = pipeline.FormatExample(task="vqa", template="vicuna_v1", tokenizer=TOK,
                               num_image_tokens=N_IMAGE, max_len=640,
                               policy=pipeline.FixedResolution((32,)), kinds=(absent,))
  row = fmt.random_map(record, np.random.default_rng(0))
  assert row["dropped"] == 1 and row["loss_mask"].sum() == 0


def test_resume_from_saved_state_sees_the_same_examples(source):
  loader = pipeline.make_loader(source, _format(), global_batch_size=4, seed=3)
  first, it = _batches(loader, 3)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed, _ = _batches(pipeline.make_loader(source, _format(), global_batch_size=4, seed=3), 4,
                        state)
  for a, b in zip(expected, resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  other, _ = _batches(pipeline.make_loader(source, _format(), global_batch_size=4, seed=4), 1)
  assert not np.array_equal(other[0]["tokens"], first[0]["tokens"])


def test_worker_processes_give_the_same_batches_and_resume(source):
  make = lambda workers: pipeline.make_loader(source, _format(), global_batch_size=4, seed=1,
                                              worker_count=workers)
  local, _ = _batches(make(0), 4)
  first, it = _batches(make(2), 2)
  state = it.get_state()
  resumed, _ = _batches(make(2), 2, state)
  for a, b in zip(local, first + resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_workers_survive_a_sigterm_meant_for_the_trainer(source):
  """A scheduler preempts by signalling the whole process group; the trainer still needs its
  workers' next batches (it checkpoints after the step it is in)."""
  it = iter(pipeline.make_loader(source, _format(), global_batch_size=4, seed=1, worker_count=1))
  next(it)
  workers = multiprocessing.active_children()
  assert workers
  for worker in workers:
    os.kill(worker.pid, signal.SIGTERM)
  time.sleep(1.0)
  assert all(w.is_alive() for w in workers)
  assert [next(it)["tokens"].shape for _ in range(3)] == [(4, 640)] * 3


def test_unusable_samples_become_counted_empty_rows(source):
  """A budget too small for the image run drops the sample; a tight one truncates it."""
  dropped, _ = _batches(pipeline.make_loader(source, _format(max_len=40), global_batch_size=2,
                                             seed=0), 1)
  b = dropped[0]
  assert b["dropped"].tolist() == [1, 1] and b["loss_mask"].sum() == 0
  assert (b["segment_ids"] == 0).all() and (b["images"] == 0).all()
  truncated, _ = _batches(pipeline.make_loader(source, _format(max_len=260),
                                               global_batch_size=2, seed=0), 1)
  assert truncated[0]["truncated"].tolist() == [1, 1]
  assert truncated[0]["dropped"].tolist() == [0, 0]


def test_stored_conversations_and_text_only_records():
  record = {"image": np.zeros((1, 1, 3), np.uint8), "has_image": False,
            "conversations": json.dumps([{"from": "human", "value": "Hi?"},
                                         {"from": "gpt", "value": "Hello."}]).encode()}
  row = _format(task="conversation").random_map(record, np.random.default_rng(0))
  assert row["has_image"] == 0 and row["dropped"] == 0
  assert not (row["tokens"] == TOK.image_id).any() and (row["images"] == 0).all()
  answer = TOK.decode(row["targets"][row["loss_mask"] == 1], skip_special_tokens=False)
  assert answer == "Hello.</s>"


def test_pad_policy_keeps_the_aspect_ratio():
  image = np.zeros((20, 60, 3), np.uint8)
  image[:, :, 0] = 255  # A red 3:1 strip.
  policy = pipeline.FixedResolution((30,), mean=(0.5, 0.5, 0.5), std=(1, 1, 1))
  view = policy(image)["images"] + 0.5
  assert view.shape == (30, 30, 3)
  np.testing.assert_allclose(view[15, 15], [1, 0, 0], atol=1e-2)  # The strip, centred.
  np.testing.assert_allclose(view[2, 15], [0.5, 0.5, 0.5], atol=1e-2)  # Padded with the mean.
  squashed = pipeline.FixedResolution((30,), aspect="squash", mean=(0, 0, 0), std=(1, 1, 1))
  np.testing.assert_allclose(squashed(image)["images"], 1.0 * (np.arange(3) == 0) + 0 * view,
                             atol=1e-2)
  with pytest.raises(ValueError, match="aspect"):
    pipeline.FixedResolution(aspect="crop")


@pytest.mark.parametrize("height,width", [(20, 60), (61, 20), (300, 511), (1024, 341), (77, 77)])
def test_pad_policy_equals_llava_image_processor(height, width):
  """LLaVA-1.5's padding (the CLIP mean colour, centred), resize and normalisation, exactly."""
  image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
  reference = image_processing_pil_llava.LlavaImageProcessorPil(
      do_pad=True, size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
  expected = reference(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  np.testing.assert_array_equal(pipeline.FixedResolution((48,))(image)["images"], expected)


def test_global_batch_is_split_over_the_batch_axes(source):
  mesh = sharding.make_mesh((2, 2, 2))
  batches, _ = _batches(pipeline.make_loader(source, _format(), global_batch_size=8, seed=0), 1)
  arrays = pipeline.to_global(batches[0], mesh)
  tokens = arrays["tokens"]
  assert tokens.shape == (8, 640)
  assert tokens.sharding.shard_shape(tokens.shape) == (2, 640)
  np.testing.assert_array_equal(np.asarray(tokens), batches[0]["tokens"])
  assert len(jax.devices()) == 8


def test_native_policy_rows_follow_each_image(source):
  """Native resolution: static row shapes whatever the image, as many placeholders as the image's
  merged patches, M-RoPE positions whose image part spans its patch grid."""
  policy = pipeline.NativeResolution(patch_size=8, min_pixels=32 * 32, max_patches=256)
  fmt = pipeline.FormatExample(task="vqa", template="vicuna_v1", tokenizer=TOK,
                               num_image_tokens=64, max_len=640, policy=policy)
  counts = set()
  for i in range(6):
    record = source[i]
    row = fmt.random_map(record, np.random.default_rng(i))
    assert row["patches"].shape == (256, 3 * 2 * 8 * 8) and row["positions"].shape == (640, 3)
    t, rows, cols = row["image_grid"]
    n = rows * cols // 4
    counts.add(n)
    assert n == policy.num_tokens(record["image"]) <= 64
    assert int((row["patch_segments"] == 1).sum()) == rows * cols
    is_image = row["tokens"] == TOK.image_id
    assert int(is_image.sum()) == n
    image_pos = row["positions"][is_image]
    start = image_pos[0, 0]
    assert (image_pos[:, 0] == start).all()
    assert image_pos[:, 1].max() - start == rows // 2 - 1
    assert image_pos[:, 2].max() - start == cols // 2 - 1
    after = np.flatnonzero(is_image)[-1] + 1
    assert (row["positions"][after] == start + max(rows, cols) // 2).all()
  assert len(counts) > 1  # The dataset's sizes and aspect ratios give different token counts.
  with pytest.raises(ValueError, match="max_patches"):
    pipeline.NativeResolution(max_patches=6)


def test_internvl_policy_rows_follow_each_image(source):
  """InternVL tiling: static tile arrays, the image's tiles first (its grid plus a thumbnail), as
  many placeholders as its tiles' tokens."""
  policy = pipeline.InternVLTiles(tile=32, max_num=4, tokens_per_tile=4)
  fmt = pipeline.FormatExample(task="vqa", template="vicuna_v1", tokenizer=TOK,
                               num_image_tokens=20, max_len=640, policy=policy)
  counts = set()
  for i in range(6):
    record = source[i]
    row = fmt.random_map(record, np.random.default_rng(i))
    assert row["tiles"].shape == (5, 32, 32, 3)
    used = int(row["tile_mask"].sum())
    cols, rows = resolution.internvl_grid(*record["image"].shape[:2], 32, 1, 4)
    assert used == cols * rows + (cols * rows > 1)
    assert (row["tile_mask"][:used] == 1).all() and not row["tiles"][used:].any()
    assert int((row["tokens"] == TOK.image_id).sum()) == 4 * used == policy.num_tokens(
        record["image"])
    counts.add(used)
  assert len(counts) > 1


def test_onevision_policy_rows_follow_each_image(source):
  """AnyRes: the base image then the best canvas' crops (normalised, zero padding after them),
  the image's plan first in the static plan arrays, as many placeholders as grid² + plan tokens."""
  candidates = ((32, 32), (32, 64), (64, 32), (64, 64))
  policy = pipeline.AnyResCrops(crop=32, grid=4, candidates=candidates, anyres_max=2)
  assert (policy.max_crops_in, policy.budget) == (5, min(64, int(1.21 * 2 * 16)) + 8)
  fmt = pipeline.FormatExample(task="vqa", template="vicuna_v1", tokenizer=TOK,
                               num_image_tokens=16, max_len=640, policy=policy)
  counts = set()
  mean, std = np.asarray(pipeline.CLIP_MEAN), np.asarray(pipeline.CLIP_STD)
  for i in range(6):
    image = source[i]["image"]
    row = fmt.random_map(source[i], np.random.default_rng(i))
    crops = resolution.anyres_crops(image, candidates, 32)
    np.testing.assert_allclose(row["crops"][:len(crops)], (crops / 255.0 - mean) / std,
                               atol=1e-5)
    assert not row["crops"][len(crops):].any()
    _, weight, kind = resolution.onevision_plan(*image.shape[:2], candidates, 32, 4, 2)
    np.testing.assert_array_equal(row["anyres_kind"][:len(kind)], kind)
    np.testing.assert_array_equal(row["anyres_weight"][:len(kind)], weight)
    assert not row["anyres_kind"][len(kind):].any()
    tokens = int((row["tokens"] == TOK.image_id).sum())
    assert tokens == 16 + len(kind) == policy.num_tokens(image)
    counts.add(tokens)
  assert len(counts) > 1
  with pytest.raises(ValueError, match="multiples of crop=32"):
    pipeline.AnyResCrops(crop=32, grid=4, candidates=((32, 48),))


def test_xcomposer_policy_rows_follow_each_image(source):
  """HD canvas: the global view (the normalised canvas, bicubic to one tile) then the tiles,
  row-major; the image's plan first; as many placeholders as the plan's tokens."""
  policy = pipeline.HDCrops(tile=32, hd_num=4, grid=2)
  assert policy.budget == 5 * 4 + 1 + 5 * 2
  fmt = pipeline.FormatExample(task="vqa", template="vicuna_v1", tokenizer=TOK,
                               num_image_tokens=16, max_len=640, policy=policy)
  mean, std = np.asarray(pipeline.CLIP_MEAN), np.asarray(pipeline.CLIP_STD)
  counts = set()
  for i in range(6):
    image = source[i]["image"]
    row = fmt.random_map(source[i], np.random.default_rng(i))
    canvas = (resolution.xcomposer_hd_image(image, 4, 32) / 255.0 - mean) / std
    rows, cols = canvas.shape[0] // 32, canvas.shape[1] // 32
    tiles = canvas.reshape(rows, 32, cols, 32, 3).swapaxes(1, 2).reshape(-1, 32, 32, 3)
    np.testing.assert_allclose(row["hd_crops"][1:1 + rows * cols], tiles, atol=1e-5)
    glb = resolution.bicubic_matrix(canvas.shape[0], 32) @ canvas.transpose(2, 0, 1) @ (
        resolution.bicubic_matrix(canvas.shape[1], 32).T)
    np.testing.assert_allclose(row["hd_crops"][0], glb.transpose(1, 2, 0), atol=1e-4)
    assert not row["hd_crops"][1 + rows * cols:].any()
    _, kind = resolution.xcomposer_plan(rows, cols, 2)
    np.testing.assert_array_equal(row["hd_kind"][:len(kind)], kind)
    tokens = int((row["tokens"] == TOK.image_id).sum())
    assert tokens == len(kind) == policy.num_tokens(image)
    counts.add(tokens)
  assert len(counts) > 1


@pytest.mark.parametrize("ratio", [1, 2])
def test_oryx_policy_budget_holds_every_aspect_and_refuses_longer(ratio):
  """Static sizes: every image with an aspect ratio up to max_aspect fits max_patches and the
  token budget; the row lists the low view then the native view, regions contiguous."""
  policy = pipeline.OryxViews(patch=16, ratio=ratio, multiple=32 * ratio, low_base=64,
                              max_res=128, table=8, max_aspect=3.0)
  rng = np.random.default_rng(ratio)
  for _ in range(300):
    long = int(np.exp(rng.uniform(np.log(8), np.log(700))))
    aspect = float(np.exp(rng.uniform(-np.log(3), np.log(3))))
    h, w = (long, max(round(long / aspect), 1)) if aspect >= 1 else (
        max(round(long * aspect), 1), long)
    if max(h, w) / min(h, w) > 3:
      continue
    low, high = resolution.oryx_views(np.zeros((h, w, 3), np.uint8), 32 * ratio, 64, 128)
    patches = (low.shape[0] * low.shape[1] + high.shape[0] * high.shape[1]) // 16 ** 2
    assert patches <= policy.max_patches, (h, w)
    assert policy.num_tokens(np.zeros((h, w, 3), np.uint8)) <= policy.budget, (h, w)
  image = rng.integers(0, 256, (90, 50, 3), np.uint8)
  row = policy(image)
  low, high = resolution.oryx_views(image, 32 * ratio, 64, 128)
  n_low, n_high = low.shape[0] * low.shape[1] // 256, high.shape[0] * high.shape[1] // 256
  np.testing.assert_array_equal(row["patch_segments"][:n_low + n_high + 1],
                                [1] * n_low + [2] * n_high + [0])
  first = (low[:16, :16].astype(np.float32) / 255.0 - 0.5) / 0.5  # Top-left patch, (c, y, x).
  np.testing.assert_allclose(row["patches"][0], first.transpose(2, 0, 1).ravel(), atol=1e-6)
  _, kind = resolution.oryx_layout(*[(v.shape[0] // 16 // ratio, v.shape[1] // 16 // ratio)
                                     for v in (low, high)])
  np.testing.assert_array_equal(row["oryx_kind"][:len(kind)], kind)
  assert not row["oryx_kind"][len(kind):].any() and len(kind) == policy.num_tokens(image)
  with pytest.raises(pipeline.ImageRefused, match="aspect ratio over max_aspect=3.0"):
    policy(np.zeros((10, 40, 3), np.uint8))
  with pytest.raises(ValueError, match="multiple=48 must be a multiple of patch · ratio"):
    pipeline.OryxViews(patch=16, ratio=2, multiple=48)


@pytest.mark.parametrize("policy", [pipeline.NativeResolution(patch_size=14, max_patches=64),
                                    pipeline.OryxViews(patch=16, multiple=32, low_base=64,
                                                       max_res=128, table=8)],
                         ids=["qwen2vl", "oryx"])
def test_an_image_a_policy_refuses_becomes_a_dropped_row(source, policy):
  """Qwen2-VL refuses aspect ratios over 200, Oryx's static budget over max_aspect: the row is
  dropped and counted, so one odd image cannot stop a training run."""
  record = {**source[0], "image": np.zeros((2, 500, 3), np.uint8)}
  with pytest.raises(pipeline.ImageRefused):
    policy(record["image"])
  fmt = pipeline.FormatExample(task="vqa", template="vicuna_v1", tokenizer=TOK,
                               num_image_tokens=16, max_len=640, policy=policy)
  row = fmt.random_map(record, np.random.default_rng(0))
  assert row["dropped"] == 1 and row["loss_mask"].sum() == 0 and row["segment_ids"].sum() == 0
  for key, blank in policy.blank().items():
    np.testing.assert_array_equal(row[key], blank)
  assert fmt.random_map(source[0], np.random.default_rng(0))["dropped"] == 0
