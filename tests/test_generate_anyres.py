"""`python -m mmjax.generate` on converted tiny LLaVA-NeXT, LLaVA-OneVision and InternVL
checkpoints (model and processor built offline, `tests/hf_models.py`): the command's stdout, and a
batch of records with images of different sizes (so different canvases or tile grids, different
token counts) and none, equal what transformers' processor, `generate` and
`decode(skip_special_tokens=True)` give one at a time."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmjax.convert import __main__ as convert_main
from tests import hf_models

CROP, PATCH = 28, 14
PINPOINTS = {"next": [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]],
             # Crops of 30 px, of which SigLIP's patch convolution reads 28.
             "onevision": [[30 * r, 30 * c] for r in range(1, 4) for c in range(1, 4)]}
VARIANTS = sorted(PINPOINTS) + ["internvl"]
SIZES = {"a.png": (40, 90), "b.png": (120, 75), "c.png": (33, 47)}
TEXT = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=CROP, patch_size=PATCH)


def _build(variant, directory, seed=0):
  """The HF model (saved with its processor files into `directory`) and its processor."""
  if variant == "next":
    hf_models.save_llava_next_processor(directory, CROP, PATCH, PINPOINTS["next"])
    processor = transformers.AutoProcessor.from_pretrained(directory)
    tok = processor.tokenizer
    config = transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                             eos_token_id=tok.eos_token_id, **TEXT),
        image_token_index=processor.image_token_id, image_grid_pinpoints=PINPOINTS["next"])
    eos = [tok.eos_token_id]
  elif variant == "internvl":  # Tiles of 56 px (2 × 2 tokens after the pixel unshuffle).
    hf_models.save_internvl_processor(directory, 2 * CROP, 6, 4)
    processor = hf_models.internvl_processor(directory)
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    config = transformers.InternVLConfig(
        vision_config=dict(VISION, image_size=[2 * CROP] * 2, patch_size=[PATCH] * 2),
        text_config=dict(TEXT, model_type="qwen2", vocab_size=320, eos_token_id=eos[0]),
        image_token_id=processor.image_token_id, image_seq_length=4)
  else:
    hf_models.save_onevision_processor(directory, 30, PATCH, PINPOINTS["onevision"])
    processor = hf_models.onevision_processor(directory)
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    config = transformers.LlavaOnevisionConfig(
        vision_config=transformers.SiglipVisionConfig(**dict(VISION, image_size=30)),
        text_config=transformers.Qwen2Config(vocab_size=320, eos_token_id=eos[0], **TEXT),
        image_token_index=processor.image_token_id, video_token_index=processor.video_token_id,
        image_grid_pinpoints=PINPOINTS["onevision"], **hf_models.ONEVISION_FIELDS)
  config.architectures = [type(config).__name__.replace("Config", "ForConditionalGeneration")]
  torch.manual_seed(seed)
  model = hf_models.perturb(getattr(transformers, config.architectures[0])(config), seed=seed,
                            scale=0.2)
  model.generation_config.eos_token_id = eos
  model.save_pretrained(directory)
  # Loaded again as a user loads it, beside the model's config.json (which decides how
  # transformers builds the tokenizer).
  processor = {"next": transformers.AutoProcessor.from_pretrained,
               "onevision": hf_models.onevision_processor,
               "internvl": hf_models.internvl_processor}[variant](directory)
  return model, processor, eos


@pytest.fixture(scope="module", params=VARIANTS)
def checkpoint(request, tmp_path_factory):
  """(transformers' model, processor and EOS ids, the converted folder, the image folder)."""
  root = tmp_path_factory.mktemp(f"generate_{request.param}")
  # Seed 1: models whose answers are not a few characters (seed 0's LLaVA-NeXT: "t 't").
  model, processor, eos = _build(request.param, root / "hf", seed=1)
  assert convert_main.main(["--hf", str(root / "hf"), "--out", str(root / "mmjax")]) == 0
  rng = np.random.default_rng(0)
  for name, size in SIZES.items():
    Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(root / name)
  return model, processor, eos, root / "mmjax", root, request.param


def _reference(checkpoint, images, prompt, max_new_tokens):
  model, processor, eos, _, _, _ = checkpoint
  return hf_models.reference_answer(model, processor, images, prompt, max_new_tokens,
                                    eos_token_id=eos, pad_token_id=0)


def test_the_command_prints_what_transformers_generates(checkpoint):
  _, _, _, directory, root, _ = checkpoint
  prompt = "What is shown in the image?"
  expected, length = _reference(checkpoint, [root / "a.png"], prompt, 20)
  assert len(expected.strip()) > 5 and length > 5  # A real answer, not one token.
  done = subprocess.run(
      [sys.executable, "-m", "mmjax.generate", "--checkpoint", str(directory), "--image",
       str(root / "a.png"), "--prompt", prompt, "--max_new_tokens", "20"],
      capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
  assert done.returncode == 0, done.stderr
  assert done.stdout == expected + "\n"


def test_a_batch_of_records_answers_as_transformers(checkpoint, tmp_path, capsys):
  """Three records a batch: images of two sizes (other canvases, other token counts), none, and
  two (each image its own row of the tower), left-padded together; LLaVA-OneVision's two images
  are refused (its processor reads them as one square view each, which the tower does not)."""
  _, _, _, directory, root, variant = checkpoint
  records = [
      {"id": "b", "prompt": "Describe the picture.", "image": str(root / "b.png")},
      {"id": "text", "prompt": "Describe a cat on a mat."},
      {"id": "c", "prompt": "What is it?", "image": str(root / "c.png")},
      {"id": "two", "prompt": "Compare them.", "image": [str(root / "a.png"), str(root / "b.png")]},
  ]
  got, err = hf_models.generate_records(directory, records, tmp_path, capsys, 12)
  answered = records if variant != "onevision" else records[:3]
  assert f"answered {len(answered)} records, {4 - len(answered)} with an error" in err
  for record in answered:
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    assert got[record["id"]].get("answer") == _reference(checkpoint, images, record["prompt"],
                                                         12)[0], record["id"]
  if variant == "onevision":
    assert "one square view each" in got["two"]["error"]
