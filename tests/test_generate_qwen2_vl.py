"""`python -m mmjax.generate` on a converted tiny Qwen2-VL (model and processor built offline):
several images of different sizes in one prompt, and a batch of records with different image
counts and sizes, answered exactly as transformers' processor, `generate` (both EOS ids of the
generation config) and `decode(skip_special_tokens=True)` answer them one at a time."""
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

CONTEXT = 256
END, TEXT_END = 302, 300  # <|im_end|>, <|endoftext|>: the generation config's EOS ids.
# Images of the records: under, inside and over the processor's pixel range, other aspects.
SIZES = {"a.png": (40, 90), "b.png": (120, 75), "c.png": (33, 47), "d.png": (200, 140)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(transformers' model and processor, the converted mmjax folder, the image folder)."""
  root = tmp_path_factory.mktemp("generate_qwen2_vl")
  hf_models.save_qwen2_vl_processor(root / "hf", 56 * 56, 28 * 28 * 16)
  config = transformers.Qwen2VLConfig(
      vision_config=dict(depth=2, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2),
      text_config=dict(vocab_size=320, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
                       eos_token_id=END, max_position_embeddings=CONTEXT,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 1, 3]}),
      **dict(zip(["vision_start_token_id", "vision_end_token_id", "image_token_id",
                  "video_token_id"], range(303, 307))))
  config.architectures = ["Qwen2VLForConditionalGeneration"]
  config.vision_config._attn_implementation = "eager"
  torch.manual_seed(1)  # A model whose answers run past a few tokens (seed 0's stop at 5).
  model = hf_models.perturb(transformers.Qwen2VLForConditionalGeneration(config), seed=1,
                            scale=0.2)
  model.generation_config.eos_token_id = [END, TEXT_END]
  model.save_pretrained(root / "hf")
  assert convert_main.main(["--hf", str(root / "hf"), "--out", str(root / "mmjax")]) == 0
  rng = np.random.default_rng(0)
  for name, size in SIZES.items():
    Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(root / name)
  return model, hf_models.qwen2_vl_processor(root / "hf"), root / "mmjax", root


def _reference(model, processor, images, prompt, max_new_tokens):
  return hf_models.reference_answer(model, processor, images, prompt, max_new_tokens,
                                    eos_token_id=[END, TEXT_END], pad_token_id=TEXT_END)


def test_two_images_of_different_sizes_print_what_transformers_generates(checkpoint):
  model, processor, directory, root = checkpoint
  prompt = "Which of the two images shows more figures?"
  images = [root / "a.png", root / "b.png"]
  expected, length = _reference(model, processor, images, prompt, 20)
  assert len(expected.strip()) > 5 and length > 5  # A real answer, not one token.
  done = subprocess.run(
      [sys.executable, "-m", "mmjax.generate", "--checkpoint", str(directory), "--image",
       str(images[0]), "--image", str(images[1]), "--prompt", prompt, "--max_new_tokens", "20"],
      capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
  assert done.returncode == 0, done.stderr
  assert done.stdout == expected + "\n"


def test_a_batch_of_records_with_different_images_answers_as_transformers(checkpoint, tmp_path,
                                                                           capsys):
  """Three records a batch (no image, one, two or three images of different sizes, left-padded
  together, their M-RoPE positions each its own) and one refused image."""
  model, processor, directory, root = checkpoint
  records = [
      {"id": "one", "prompt": "What is shown in the image?", "image": str(root / "d.png")},
      {"id": "text", "prompt": "Describe a cat on a mat."},
      {"id": "three", "prompt": "Compare them.",
       "image": [str(root / "c.png"), str(root / "a.png"), str(root / "b.png")]},
      {"id": "two", "prompt": "Which image is larger?",
       "image": [str(root / "b.png"), str(root / "c.png")]},
      {"id": "thin", "prompt": "What is it?", "image": str(tmp_path / "thin.png")},
  ]
  Image.fromarray(np.zeros((2, 500, 3), np.uint8)).save(tmp_path / "thin.png")
  got, err = hf_models.generate_records(directory, records, tmp_path, capsys, 12)
  assert "answered 4 records, 1 with an error" in err
  for record in records[:4]:
    images = [record["image"]] if isinstance(record.get("image"), str) else record.get("image", [])
    expected, _ = _reference(model, processor, images, record["prompt"], 12)
    assert got[record["id"]].get("answer") == expected, record["id"]
  assert "spect ratio" in got["thin"]["error"]
