"""Qwen2-VL native resolution: patches, packing, the vision tower and M-RoPE positions against
transformers' reference code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import vision_utils
from transformers.models.qwen2_vl import configuration_qwen2_vl
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl
from transformers.models.qwen2_vl import modeling_qwen2_vl

from mmjax.convert import hf as hf_convert
from mmjax.data import mrope
from mmjax.data import patches as patches_lib
from mmjax.models import native_vit
from mmjax.models import llm
from mmjax.models import rope
from tests import hf_models

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_patches_match_qwen2_vl_processor():
  processor = image_processing_pil_qwen2_vl.Qwen2VLImageProcessorPil()
  rng = np.random.default_rng(0)
  for h, w in [(60, 90), (333, 111), (28, 28), (500, 1200), (17, 400)]:
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    ref = processor(images=[Image.fromarray(image)], return_tensors="np")
    ours = patches_lib.native_image(image, CLIP_MEAN, CLIP_STD)
    assert (1, *ours.grid) == tuple(ref["image_grid_thw"][0])
    np.testing.assert_allclose(ours.patches, ref["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("rows,cols", [(2, 2), (4, 6), (10, 2), (16, 16)])
def test_vision_positions_match_reference(rows, cols):
  expected = vision_utils.get_vision_position_ids(torch.tensor([[1, rows, cols]]), 2)
  np.testing.assert_array_equal(patches_lib.vision_positions(rows, cols, 2), expected.numpy())


def tiny_reference():
  config = configuration_qwen2_vl.Qwen2VLVisionConfig(
      depth=2, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2, patch_size=4,
      temporal_patch_size=2, spatial_merge_size=2)
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = hf_models.perturb(modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel(config))
  hf_config = {**config.to_dict(), "architectures": ["Qwen2VisionTransformerPretrainedModel"]}
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, hf_config, tensors


def test_native_vit_matches_qwen2_vl_on_packed_images():
  model, hf_config, tensors = tiny_reference()
  config, params = hf_convert.from_hf_tensors(hf_config, tensors)
  rng = np.random.default_rng(1)
  grids = [(2, 4), (6, 2), (4, 4)]  # Patch grids of three images of different shapes.
  images = [patches_lib.patchify(rng.normal(size=(r * 4, c * 4, 3)).astype(np.float32), 4, 2)
            for r, c in grids]
  row = patches_lib.pack(images, 48)  # 8 + 12 + 16 = 36 patches, 12 of padding.
  out = native_vit.NativeViT(config).apply(
      {"params": params}, *(jnp.asarray(row[k])[None]
                            for k in ("patches", "positions", "segment_ids")))
  with torch.no_grad():
    ref = model(torch.from_numpy(np.concatenate([im.patches for im in images])),
                grid_thw=torch.tensor([[1, r, c] for r, c in grids]))
  np.testing.assert_allclose(np.asarray(out["hidden"][0, :36]), ref.last_hidden_state.numpy(),
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["merged"][0, :9]), ref.pooler_output.numpy(),
                             atol=1e-4)
  exported = hf_convert.to_hf_tensors(config, params, "Qwen2VisionTransformerPretrainedModel")[1]
  assert exported.keys() == tensors.keys()
  for name, value in tensors.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_packed_images_do_not_see_each_other():
  config = native_vit.NativeViTConfig(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                                      out_width=8)
  rng = np.random.default_rng(2)
  a, b, c = (patches_lib.patchify(rng.normal(size=(8, 8, 3)).astype(np.float32), 4, 2)
             for _ in range(3))
  model = native_vit.NativeViT(config)
  run = lambda ims: model.apply(params, *(jnp.asarray(v)[None] for v in
                                          patches_lib.pack(ims, 16).values()))["merged"][0, 0]
  params = model.init(jax.random.key(0), *(jnp.asarray(v)[None] for v in
                                           patches_lib.pack([a, b], 16).values()))
  np.testing.assert_allclose(run([a, b]), run([a, c]), atol=1e-6)


def test_stream_of_random_sizes_compiles_once_per_bucket():
  """50 images of random sizes through a jitted tower: at most one compile per bucket."""
  config = native_vit.NativeViTConfig(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                                      out_width=8)
  model = native_vit.NativeViT(config)
  buckets = patches_lib.geometric_buckets(16, 512)
  rng = np.random.default_rng(3)
  images = [patches_lib.native_image(rng.integers(0, 256, (h, w, 3), np.uint8), CLIP_MEAN,
                                     CLIP_STD, patch=4, min_pixels=8 * 8, max_pixels=64 * 64)
            for h, w in rng.integers(4, 200, (50, 2))]
  first = patches_lib.pack(images[:1], bucket_len := patches_lib.bucket(
      images[0].num_tokens, buckets))
  params = model.init(jax.random.key(0), *(jnp.asarray(v)[None] for v in first.values()))
  encode = jax.jit(lambda p, x, pos, seg: model.apply(p, x, pos, seg)["merged"])
  used = set()
  for im in images:
    length = patches_lib.bucket(im.num_tokens, buckets)
    used.add(length)
    row = patches_lib.pack([im], length)
    encode(params, *(jnp.asarray(v)[None] for v in row.values()))
  assert bucket_len in used
  assert encode._cache_size() == len(used) <= len(buckets)


def test_pack_greedy_and_waste():
  counts = [30, 20, 40, 10, 64, 5]
  rows = patches_lib.pack_greedy(counts, 64)
  assert sorted(i for r in rows for i in r) == list(range(len(counts)))
  assert all(sum(counts[i] for i in r) <= 64 for r in rows)
  assert rows[0] == [0, 1, 3]  # First fit: 30 + 20 + 10, then the 5 goes to the next open row.
  assert patches_lib.padding_waste(counts, len(rows), 64) == pytest.approx(1 - 169 / 192)
  with pytest.raises(ValueError, match="more than a row"):
    patches_lib.pack_greedy([65], 64)
  with pytest.raises(ValueError, match="largest bucket"):
    patches_lib.bucket(600, (16, 512))


def test_mrope_positions_match_get_rope_index():
  """Text and images of different grids, several per row, padded rows: positions and deltas."""
  rng = np.random.default_rng(4)
  image_token = 99
  config = modeling_qwen2_vl.Qwen2VLConfig(
      text_config={"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                   "intermediate_size": 64, "vocab_size": 128,
                   "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
      vision_config={"depth": 1, "embed_dim": 16, "num_heads": 2, "hidden_size": 32},
      image_token_id=image_token)
  model = modeling_qwen2_vl.Qwen2VLModel(config)
  for trial in range(20):
    rows, types, grids, lengths = [], [], [], []
    for _ in range(3):
      tokens, row_grids = [], []
      for _ in range(int(rng.integers(0, 3))):
        t, h, w = 1, 2 * int(rng.integers(1, 6)), 2 * int(rng.integers(1, 6))
        # At least one text token (<|vision_start|>) before each image, as the processor writes.
        tokens += [1] * int(rng.integers(1, 4)) + [image_token] * (h * w // 4)
        row_grids.append((t, h, w))
      tokens += [1] * int(rng.integers(1, 5))
      rows.append(tokens)
      grids.append(row_grids)
      lengths.append(len(tokens))
    t = max(lengths)
    ids = np.zeros((3, t), np.int64)
    valid = np.zeros((3, t), bool)
    for i, tokens in enumerate(rows):  # Left padding, as for generation.
      ids[i, t - len(tokens):] = tokens
      valid[i, t - len(tokens):] = True
    types = (ids == image_token).astype(np.int64)
    flat_grids = [g for row in grids for g in row]
    expected, deltas = model.get_rope_index(
        torch.from_numpy(ids), torch.from_numpy(types),
        image_grid_thw=torch.tensor(flat_grids) if flat_grids else None,
        attention_mask=torch.from_numpy(valid.astype(np.int64)))
    ours, our_deltas = mrope.batch_mrope_positions(types, valid, grids)
    np.testing.assert_array_equal(ours, expected.numpy(), err_msg=f"trial {trial}")
    np.testing.assert_array_equal(our_deltas, deltas.numpy()[:, 0])


def test_mrope_errors_are_named():
  with pytest.raises(ValueError, match="does not match its grid"):
    mrope.mrope_positions([0, 1, 1, 1], [(1, 4, 4)])
  with pytest.raises(ValueError, match="More image runs"):
    mrope.mrope_positions([1, 0, 1], [(1, 2, 2)])
  with pytest.raises(ValueError, match="fewer image runs"):
    mrope.mrope_positions([0, 0], [(1, 2, 2)])


def test_mrope_angles_match_qwen2_vl_rotary():
  config = modeling_qwen2_vl.Qwen2VLConfig(
      text_config={"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
                   "intermediate_size": 64, "vocab_size": 128,
                   "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                       "mrope_section": [4, 6, 6]}})
  rotary = modeling_qwen2_vl.Qwen2VLRotaryEmbedding(config.text_config)
  positions = np.random.default_rng(5).integers(0, 500, (3, 2, 7))
  cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.from_numpy(positions))
  ours = rope.mrope_angles(jnp.asarray(positions), 32, 1e4, (4, 6, 6))
  np.testing.assert_allclose(ours[0], cos.numpy(), atol=1e-5)
  np.testing.assert_allclose(ours[1], sin.numpy(), atol=1e-5)
  same = jnp.broadcast_to(jnp.asarray(positions[0]), (3, 2, 7))
  np.testing.assert_allclose(rope.mrope_angles(same, 32, 1e4, (4, 6, 6))[0],
                             rope.rope_angles(same[0], 32, 1e4)[0], atol=1e-6)


def test_mrope_llm_matches_qwen2_vl_text_model():
  """The decoder with M-RoPE sections on Qwen2-VL's language model, positions from images."""
  dims = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
              intermediate_size=64, vocab_size=97, bos_token_id=0, eos_token_id=1)
  torch.manual_seed(0)
  reference = hf_models.perturb(modeling_qwen2_vl.Qwen2VLTextModel(
      configuration_qwen2_vl.Qwen2VLTextConfig(
          **dims, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                   "mrope_section": [1, 1, 2]})))
  hf_config = {**transformers.Qwen2Config(**dims, tie_word_embeddings=True).to_dict(),
               "architectures": ["Qwen2ForCausalLM"]}
  tensors = {f"model.{k}": v.numpy() for k, v in reference.state_dict().items()}
  config, params = hf_convert.from_hf_tensors(hf_config, tensors, mrope_sections=(1, 1, 2))
  types = [0, 0] + [1] * 6 + [0] * 3 + [1] * 4 + [0] * 2
  positions, _ = mrope.mrope_positions(types, [(1, 4, 6), (1, 4, 4)])
  embeds = np.random.default_rng(6).normal(size=(1, len(types), 32)).astype(np.float32)
  _, hidden, _ = llm.Decoder(config).apply({"params": params}, jnp.asarray(embeds),
                                           jnp.asarray(positions[:, None]),
                                           jnp.ones((1, len(types)), jnp.int32))
  with torch.no_grad():
    expected = reference(inputs_embeds=torch.from_numpy(embeds),
                         position_ids=torch.from_numpy(positions[:, None].astype(np.int64)))
  np.testing.assert_allclose(hidden, expected.last_hidden_state.numpy(), atol=1e-4)
  assert not np.allclose(positions[0], positions[1])  # The image rows / columns did differ.
