"""`python -m mmjax.generate` on a converted tiny LLaVA-1.5 (model and processor built offline)
prints exactly what transformers' processor, `generate` and `decode(skip_special_tokens=True)`
give, and refuses bad input with one line."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from mmjax import generate
from mmjax.convert import __main__ as convert_main
from tests import hf_models

IMAGE, PATCH, CONTEXT = 56, 14, 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(transformers' model and processor, the converted mmjax folder, an image file)."""
  root = tmp_path_factory.mktemp("generate")
  processor = hf_models.llava_processor(IMAGE, PATCH)
  tok = processor.tokenizer
  config = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(
          hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
          image_size=IMAGE, patch_size=PATCH),
      text_config=transformers.LlamaConfig(
          vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
          pad_token_id=tok.pad_token_id),
      image_token_index=processor.image_token_id)
  config.architectures = ["LlavaForConditionalGeneration"]
  torch.manual_seed(0)
  model = hf_models.perturb(transformers.LlavaForConditionalGeneration(config), scale=0.2)
  model.generation_config.eos_token_id = tok.eos_token_id
  model.save_pretrained(root / "hf")
  processor.save_pretrained(root / "hf")
  assert convert_main.main(["--hf", str(root / "hf"), "--out", str(root / "mmjax")]) == 0
  # As a user loads it: transformers rebuilds a LlamaTokenizer's pipeline on loading.
  processor = transformers.AutoProcessor.from_pretrained(root / "hf")
  image = np.random.default_rng(0).integers(0, 256, (40, 90, 3), np.uint8)
  Image.fromarray(image).save(root / "image.png")
  return model, processor, root / "mmjax", root / "image.png"


def _reference(model, processor, image_path, prompt, max_new_tokens):
  """transformers' answer (and its length) with the image at `image_path`, or none."""
  images = [image_path] if image_path is not None else []
  return hf_models.reference_answer(model, processor, images, prompt, max_new_tokens,
                                    eos_token_id=processor.tokenizer.eos_token_id,
                                    pad_token_id=processor.tokenizer.pad_token_id)


def test_the_command_prints_what_transformers_generates(checkpoint):
  model, processor, directory, image = checkpoint
  prompt = "What is shown in the image?"
  expected, length = _reference(model, processor, image, prompt, 20)
  assert len(expected.strip()) > 5 and length > 5  # A real answer, not one token.
  done = subprocess.run(
      [sys.executable, "-m", "mmjax.generate", "--checkpoint", str(directory), "--image",
       str(image), "--prompt", prompt, "--max_new_tokens", "20"],
      capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
  assert done.returncode == 0, done.stderr
  assert done.stdout == expected + "\n"


def test_two_images_print_what_transformers_generates(checkpoint, tmp_path, capsys):
  """Two images of one prompt, each its own row of the tower (max_images), as transformers'
  LLaVA reads them: each `<image>` its 16 tokens, in order."""
  model, processor, directory, image = checkpoint
  other = tmp_path / "other.png"
  Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 60, 3), np.uint8)).save(other)
  prompt = "Which of the two images shows more figures?"
  expected, _ = hf_models.reference_answer(
      model, processor, [image, other], prompt, 20, eos_token_id=processor.tokenizer.eos_token_id,
      pad_token_id=processor.tokenizer.pad_token_id)
  assert generate.main(["--checkpoint", str(directory), "--image", str(image), "--image",
                        str(other), "--prompt", prompt, "--max_new_tokens", "20"]) == 0
  assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("extra, message", [
    (["--raw"], r"--prompt — The prompt holds 0 image markers '<image>' for 1 images"),
    (["--max_new_tokens", "0"], "--max_new_tokens 0 — must be at least 1"),
    (["--prompt", "the cat " * 60], r"--prompt — is \d+ tokens with its images, the model's "
                                    f"context is {CONTEXT}"),
])
def test_bad_input_is_one_line(checkpoint, capsys, extra, message):
  _, _, directory, image = checkpoint
  argv = ["--checkpoint", str(directory), "--image", str(image), "--prompt", "Describe it."]
  code = generate.main(argv + [a.format(image=image) for a in extra])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith("error: ") and re.search(message, err[0]), err[0]


def test_a_missing_checkpoint_or_a_part_of_a_model_is_refused(checkpoint, tmp_path, capsys):
  """No folder; a converted LLaMA alone (no tower: nothing to see images with)."""
  model, _, _, _ = checkpoint
  transformers.LlamaForCausalLM(model.config.text_config).save_pretrained(tmp_path / "llm_hf")
  assert convert_main.main(["--hf", str(tmp_path / "llm_hf"), "--out",
                            str(tmp_path / "llm")]) == 0
  for folder, message in ((tmp_path / "absent", "no such folder"),
                          (tmp_path / "llm", "not a whole multimodal model")):
    code = generate.main(["--checkpoint", str(folder), "--prompt", "Hi"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: --checkpoint {folder}" in err and message in err, err


def test_jsonl_answers_reports_bad_records_and_resumes(checkpoint, tmp_path, capsys):
  """Records in batches of two: answers equal transformers' one at a time, bad records are
  reported in the output, and a re-run after a kill (the output cut mid-line) redoes nothing
  finished and ends with the same file."""
  model, processor, directory, image = checkpoint
  other = tmp_path / "other.png"
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 60, 3), np.uint8)).save(other)
  (tmp_path / "image.png").write_bytes(image.read_bytes())
  records = [
      {"id": "a", "prompt": "What is shown in the image?", "image": "image.png"},
      {"id": 7, "prompt": "Describe the picture.", "image": ["other.png"]},
      {"id": "text", "prompt": "Which of the two images shows more figures?"},
      {"id": "missing", "prompt": "Describe it.", "image": "absent.png"},
      {"id": "long", "prompt": "the cat " * 60, "image": "image.png"},
      {"prompt": "Describe it.", "image": "other.png", "raw": True},  # No <image> marker.
  ]
  source = tmp_path / "records.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
  out = tmp_path / "answers.jsonl"
  argv = ["--checkpoint", str(directory), "--input", str(source), "--output", str(out),
          "--batch_size", "2", "--max_new_tokens", "12"]
  assert generate.main(argv) == 0
  assert "answered 3 records, 4 with an error" in capsys.readouterr().err
  lines = out.read_text().splitlines()
  got = [json.loads(line) for line in lines]
  assert [r["id"] for r in got] == ["a", 7, "text", "missing", "long", "line 6", "line 7"]
  assert got[0]["answer"] == _reference(model, processor, image, records[0]["prompt"], 12)[0]
  assert got[1]["answer"] == _reference(model, processor, other, records[1]["prompt"], 12)[0]
  assert got[2]["answer"] == _reference(model, processor, None, records[2]["prompt"], 12)[0]
  assert "absent.png" in got[3]["error"] and "context is" in got[4]["error"]
  assert "0 image markers" in got[5]["error"] and "not JSON" in got[6]["error"]
  # A kill during the third line: the re-run keeps two, redoes the rest, gives the same file.
  out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
  assert generate.main(argv) == 0
  err = capsys.readouterr().err
  assert "resuming: 2 of 7 records answered already" in err and "answered 1 records" in err
  assert out.read_text().splitlines() == lines
  source.write_text(source.read_text() + json.dumps({"id": 7, "prompt": "Again."}) + "\n")
  assert generate.main(argv) == 2
  assert "id 7 belongs to two records (numbers 2 and 8)" in capsys.readouterr().err
