"""Whole LLaVA-1.5 checkpoints (`LlavaForConditionalGeneration`): conversion both ways, logits
and greedy generation equal to transformers', on tiny random-init models built offline."""
import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers

from mmjax.convert import __main__ as convert_main
from mmjax.convert import hf
from mmjax.models import mllm
from mmjax import sampling
from tests import hf_models

VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              image_size=56, patch_size=14)
IMAGE_ID = 127
# Noise on every weight: at the default 0.05 the tiny models' logits span ±1.6 and greedy decoding
# repeats one token; at 0.2 they span ±5.7 and 20 greedy tokens vary (ours ≤ 4e-6 from theirs).
SCALE = 0.2
VARIANTS = {
    # LLaVA-1.5: penultimate layer, class token dropped, LLaMA with GQA and its own head.
    "llava15": dict(vision=dict(VISION, hidden_act="quick_gelu"),
                    text=transformers.LlamaConfig(
                        vocab_size=128, hidden_size=48, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        tie_word_embeddings=False),
                    layer=-2, strategy="default"),
    # A Qwen2 decoder with tied embeddings, the last layer and the class token kept.
    "qwen2_full": dict(vision=dict(VISION, hidden_act="gelu"),
                       text=transformers.Qwen2Config(
                           vocab_size=128, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                           tie_word_embeddings=True),
                       layer=-1, strategy="full"),
}


def _hf_model(variant: str) -> transformers.LlavaForConditionalGeneration:
  v = VARIANTS[variant]
  config = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(**v["vision"]), text_config=v["text"],
      image_token_index=IMAGE_ID, vision_feature_layer=v["layer"],
      vision_feature_select_strategy=v["strategy"],
      tie_word_embeddings=v["text"].tie_word_embeddings)
  config.architectures = ["LlavaForConditionalGeneration"]
  torch.manual_seed(0)
  return hf_models.perturb(transformers.LlavaForConditionalGeneration(config), scale=SCALE)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
  """(HF model, its directory, mmjax config, mmjax params) through `python -m mmjax.convert`."""
  model = _hf_model(request.param)
  directory = hf_models.save(model, tmp_path_factory.mktemp(request.param) / "hf")
  out = directory.parent / "mmjax"
  assert convert_main.main(["--hf", str(directory), "--out", str(out)]) == 0
  config, params, arch = hf.load(out)
  assert arch == "LlavaForConditionalGeneration" and isinstance(config, mllm.MLLMConfig)
  return model, directory, config, params


def _prompts(rng, config, lengths):
  """Prompts of `lengths` text tokens around one image's placeholders (LLaVA's 4x4 patches, plus
  the class token with the "full" strategy)."""
  n = config.max_visual_tokens
  out = []
  for before, after in lengths:
    text = rng.integers(0, IMAGE_ID, before + after)
    out.append(np.concatenate([text[:before], np.full(n, IMAGE_ID), text[before:]]))
  return out


def _pixels(rng, batch):
  """Normalised pixels, [B H W 3] for mmjax and [B 3 H W] for transformers."""
  images = rng.standard_normal((batch, 56, 56, 3)).astype(np.float32)
  return images, torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def test_logits_equal_transformers(pair, rng):
  model, _, config, params = pair
  prompts = _prompts(rng, config, [(3, 5), (1, 2)])
  batch = sampling.pad_prompts(prompts)
  images, pixel_values = _pixels(rng, 2)
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(batch["tokens"]).long(), pixel_values=pixel_values,
                attention_mask=torch.from_numpy(batch["segment_ids"]).long()).logits.numpy()
  logits, _ = jax.jit(mllm.MLLM(config).apply)({"params": params}, {**batch, "images": images})
  valid = batch["segment_ids"] == 1
  assert np.abs(ref[valid]).max() > 1e-2
  np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=1e-4, rtol=0)


def test_greedy_generation_equals_transformers_generate(pair, rng):
  """20 greedy tokens for three prompts of different lengths (left-padded into one batch), each
  with its image; a row stops at the model's EOS (then padding), as `generate` stops it."""
  model, _, config, params = pair
  eos = model.generation_config.eos_token_id
  prompts = _prompts(rng, config, [(2, 6), (4, 1), (0, 3)])
  images, pixel_values = _pixels(rng, 3)
  ours, lengths = sampling.generate(mllm.MLLM(config), {"params": params}, prompts, images,
                                    max_new_tokens=20, eos_id=eos, pad_id=0, bucket=1)
  batch = sampling.pad_prompts(prompts)
  gen = transformers.GenerationConfig(max_new_tokens=20, do_sample=False, eos_token_id=eos,
                                      pad_token_id=0)
  with torch.no_grad():
    ref = model.generate(input_ids=torch.from_numpy(batch["tokens"]).long(),
                         attention_mask=torch.from_numpy(batch["segment_ids"]).long(),
                         pixel_values=pixel_values, generation_config=gen)
  hf_models.assert_same_greedy(ours, lengths, ref, batch["tokens"].shape[1])


def test_round_trip_is_bit_exact(pair, tmp_path):
  """HF → mmjax → HF gives transformers the same state dict, CLIP's unused post-norm included,
  and the same model config."""
  model, directory, _, _ = pair
  mmjax_dir = directory.parent / "mmjax"
  assert convert_main.main(["--to_hf", "--mmjax", str(mmjax_dir), "--out",
                            str(tmp_path / "hf")]) == 0
  again = hf_models.exported_equals(model, tmp_path / "hf")
  for key in ("image_token_index", "vision_feature_layer", "vision_feature_select_strategy"):
    assert getattr(again.config, key) == getattr(model.config, key), key
  for part in ("vision_config", "text_config"):
    theirs, ours = getattr(model.config, part).to_dict(), getattr(again.config, part).to_dict()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "hidden_act", "model_type", "num_key_value_heads", "tie_word_embeddings"):
      assert ours.get(key) == theirs.get(key), (part, key)


@pytest.mark.parametrize("names", [
    # llava-hf's public checkpoints, saved by transformers 4.x.
    (("vision_tower.", "vision_tower.vision_model."),),
    # transformers 5's in-memory names (its state_dict()).
    (("vision_tower.", "model.vision_tower."),
     ("multi_modal_projector.", "model.multi_modal_projector."),
     ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))])
def test_other_namings_convert_the_same(pair, names):
  _, directory, _, params = pair
  hf_config, tensors = hf.files.read_hf(directory)
  renamed = {}
  for name, value in tensors.items():
    for disk, other in names:
      if name.startswith(disk):
        name = other + name[len(disk):]
        break
    renamed[name] = value
  assert set(renamed) != set(tensors)
  _, again, kept = hf.import_hf(hf_config, renamed)
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))
  assert sorted(kept) == [
      "vision_tower.post_layernorm.bias", "vision_tower.post_layernorm.weight"]


def test_conversion_errors_name_the_tensor_or_field(pair):
  _, directory, _, _ = pair
  hf_config, tensors = hf.files.read_hf(directory)
  name = "multi_modal_projector.linear_2.bias"
  with pytest.raises(ValueError, match=f"missing.*{name}"):
    hf.from_hf_tensors(hf_config, {k: v for k, v in tensors.items() if k != name})
  with pytest.raises(ValueError, match="unknown.*extra.weight"):
    hf.from_hf_tensors(hf_config, {**tensors, "extra.weight": np.zeros(3)})
  with pytest.raises(ValueError, match=r"vision_feature_layer=\[-2, -1\].*not supported"):
    hf.from_hf_tensors({**hf_config, "vision_feature_layer": [-2, -1]}, tensors)
  with pytest.raises(ValueError, match="vision_feature_select_strategy='patch'.*valid"):
    hf.from_hf_tensors({**hf_config, "vision_feature_select_strategy": "patch"}, tensors)


def test_the_converted_config_is_written_with_its_parts(pair):
  _, directory, config, _ = pair
  meta = json.loads((directory.parent / "mmjax" / "config.json").read_text())
  assert meta["config"]["tower"]["__type__"] == "mmjax.models.towers.vit:ViTTowerConfig"
  assert config.image_token_id == IMAGE_ID and config.image_token_in_vocab
  assert (directory.parent / "mmjax" / hf.KEPT_FILE).is_file()


def test_scanned_layers_and_bfloat16_run_the_same_model(pair, rng):
  """--scan_layers stacks the ViT's and the decoder's blocks: the same logits; bfloat16 weights
  and compute: finite logits close to float32's (no parity bound in bfloat16)."""
  _, directory, config, params = pair
  prompts = _prompts(rng, config, [(3, 4)])
  batch = {**sampling.pad_prompts(prompts), "images": _pixels(rng, 1)[0]}
  def logits(config, params):
    return np.asarray(jax.jit(mllm.MLLM(config).apply)({"params": params}, batch)[0], np.float32)
  ref = logits(config, params)
  scanned_config, scanned = hf.load_hf(directory, scan_layers=True)
  assert "layers" in scanned["llm"]["blocks"] and "layers" in scanned["tower"]["vit"]["blocks_0"]
  np.testing.assert_allclose(logits(scanned_config, scanned), ref, atol=1e-5, rtol=0)
  bf16_config, bf16 = hf.load_hf(directory, param_dtype="bfloat16")
  bf16_config = dataclasses.replace(
      bf16_config, llm=dataclasses.replace(bf16_config.llm, dtype="bfloat16"),
      tower=dataclasses.replace(bf16_config.tower, vit=dataclasses.replace(
          bf16_config.tower.vit, dtype="bfloat16")))
  assert {x.dtype for x in jax.tree.leaves(bf16)} == {np.dtype(jax.numpy.bfloat16)}
  got = logits(bf16_config, bf16)
  assert np.isfinite(got).all()
  assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_an_image_token_without_an_image_reads_its_own_embedding(pair, rng):
  """A decoding step feeds back a generated `<image>` token: transformers embeds it by its own row
  (no pixels to replace it with), and so does the MLLM."""
  model, _, config, params = pair
  tokens = np.array([[5, IMAGE_ID, 9, IMAGE_ID, 11]], np.int32)
  batch = {"tokens": tokens, "positions": np.arange(5)[None], "segment_ids": np.ones_like(tokens)}
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
  logits, _ = jax.jit(mllm.MLLM(config).apply)({"params": params}, batch)
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
