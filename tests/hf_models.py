"""Small random-init Hugging Face models for parity tests, saved as safetensors checkpoints."""
import json
import pathlib
from unittest import mock

import numpy as np
import tokenizers
import torch
import transformers
from PIL import Image
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
  """Adds noise to every parameter so norms, biases and scales are not at their init values."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return model.eval()


def save(model: torch.nn.Module, directory: pathlib.Path) -> pathlib.Path:
  model.save_pretrained(directory, safe_serialization=True)
  return directory


# llava-hf/llava-1.5-7b-hf's chat template (its chat_template.json).
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
CORPUS = ["What is shown in the image? A red square and a blue circle, left of a tree.",
          "USER: describe the picture ASSISTANT: a cat sits on the mat; it isn't moving.",
          "Which of the two images shows more figures? The first one."] * 10


def llama_tokenizer() -> transformers.PreTrainedTokenizerBase:
  """A LLaMA-style tokenizer: byte-fallback BPE on '▁'-joined words, <s> prepended."""
  tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
  tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                         normalizers.Replace(" ", "▁")])
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=340, special_tokens=["<unk>", "<s>", "</s>"] +
      [f"<0x{i:02X}>" for i in range(256)]))
  out = transformers.LlamaTokenizer(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                    unk_token="<unk>", add_bos_token=True)
  out.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
  return out


def llava_processor(image_size: int, patch_size: int) -> transformers.LlavaProcessor:
  """LLaVA-1.5's processor (CLIP image processor, class token counted then dropped, its chat
  template) around `llama_tokenizer()`, for a tower of `image_size` px at `patch_size`."""
  image = transformers.CLIPImageProcessorPil(
      size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
  return transformers.LlavaProcessor(
      image_processor=image, tokenizer=llama_tokenizer(), patch_size=patch_size,
      vision_feature_select_strategy="default", num_additional_image_tokens=1,
      chat_template=LLAVA15_CHAT_TEMPLATE)


# Qwen/Qwen2-VL-7B-Instruct's chat template (its chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN2_VL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                    "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def qwen2_tokenizer() -> transformers.PreTrainedTokenizerBase:
  """A Qwen2-style tokenizer: byte-level BPE trained on `CORPUS` (the 256 byte symbols and 44
  merges, ids 0–299), then Qwen2-VL's special tokens (ids 300–306, `QWEN2_VL_SPECIAL`)."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(tok.to_str())["model"]
  out = transformers.Qwen2Tokenizer(vocab=model["vocab"],
                                    merges=[tuple(m) for m in model["merges"]])
  out.add_special_tokens({"additional_special_tokens": QWEN2_VL_SPECIAL[1:]})
  return out


def save_qwen2_vl_processor(directory: pathlib.Path, min_pixels: int, max_pixels: int) -> None:
  """Qwen2-VL's processor files (tokenizer, image processor, chat template) as
  `Qwen2VLProcessor.save_pretrained` writes them, without its video processor (which needs
  torchvision)."""
  qwen2_tokenizer().save_pretrained(directory)
  transformers.Qwen2VLImageProcessorPil(min_pixels=min_pixels,
                                        max_pixels=max_pixels).save_pretrained(directory)
  (directory / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)


def _loaded_without_video(cls, directory: pathlib.Path, **fields):
  """transformers' processor `cls` of the tokenizer, image processor and chat template loaded
  back from `directory` (beside its model's config.json, as transformers loads a checkpoint),
  with `fields`, and without the video processor its `from_pretrained` would need."""
  with _allow_no_video():
    return cls(image_processor=transformers.AutoImageProcessor.from_pretrained(directory),
               tokenizer=transformers.AutoTokenizer.from_pretrained(directory),
               chat_template=(directory / "chat_template.jinja").read_text(), **fields)


def qwen2_vl_processor(directory: pathlib.Path) -> transformers.Qwen2VLProcessor:
  return _loaded_without_video(transformers.Qwen2VLProcessor, directory)


def reference_answer(model, processor, image_paths, prompt: str, max_new_tokens: int, *,
                     eos_token_id, pad_token_id) -> tuple[str, int]:
  """transformers' answer to a user message with images before the text: the processor's chat
  template and inputs, greedy `generate`, `decode(skip_special_tokens=True)`; and its length in
  tokens."""
  content = [{"type": "image"}] * len(image_paths) + [{"type": "text", "text": prompt}]
  text = processor.apply_chat_template([{"role": "user", "content": content}],
                                       add_generation_prompt=True)
  inputs = processor(images=[Image.open(x) for x in image_paths] or None, text=[text],
                     return_tensors="pt")
  gen = transformers.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=eos_token_id, pad_token_id=pad_token_id)
  with torch.no_grad():
    out = model.generate(**inputs, generation_config=gen)
  answer = out[0, inputs["input_ids"].shape[1]:]
  return processor.tokenizer.decode(answer, skip_special_tokens=True), len(answer)


# The form of llava-hf's LLaVA-OneVision chat template: images, then text, in ChatML turns.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}{{'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _allow_no_video():
  """transformers' processors that take a video processor (which needs torchvision), built
  without one."""
  check = transformers.ProcessorMixin.check_argument_for_proper_class

  def allow(self, name, arg):
    return None if name == "video_processor" and arg is None else check(self, name, arg)

  return mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", allow)


def save_llava_next_processor(directory: pathlib.Path, crop: int, patch: int,
                              pinpoints) -> None:
  """LLaVA-NeXT's processor (AnyRes image processor, CLIP's class token counted then dropped,
  LLaVA-1.5's chat template) around `llama_tokenizer()`, for crops of `crop` px."""
  image = transformers.LlavaNextImageProcessorPil(
      size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
      image_grid_pinpoints=pinpoints)
  transformers.LlavaNextProcessor(
      image_processor=image, tokenizer=llama_tokenizer(), patch_size=patch,
      vision_feature_select_strategy="default", num_additional_image_tokens=1,
      chat_template=LLAVA15_CHAT_TEMPLATE).save_pretrained(directory)


ONEVISION_FIELDS = dict(vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_1")


def save_onevision_processor(directory: pathlib.Path, crop: int, patch: int, pinpoints) -> None:
  """LLaVA-OneVision's processor files (SigLIP's mean and std, no class token, maps shrunk over
  one crop's tokens) around `qwen2_tokenizer()` with `<image>` and `<video>` added, as its
  processor's `save_pretrained` writes them (which fails without a video processor)."""
  tok = qwen2_tokenizer()
  tok.add_special_tokens({"additional_special_tokens": QWEN2_VL_SPECIAL[1:] + ["<image>",
                                                                              "<video>"]})
  tok.save_pretrained(directory)
  transformers.LlavaOnevisionImageProcessorPil(
      size={"height": crop, "width": crop}, image_grid_pinpoints=pinpoints,
      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
  fields = dict(ONEVISION_FIELDS, num_image_tokens=(crop // patch) ** 2, image_token="<image>",
                video_token="<video>", processor_class="LlavaOnevisionProcessor")
  (directory / "processor_config.json").write_text(json.dumps(fields, indent=2))
  (directory / "chat_template.jinja").write_text(ONEVISION_CHAT_TEMPLATE)


def onevision_processor(directory: pathlib.Path) -> transformers.LlavaOnevisionProcessor:
  fields = json.loads((directory / "processor_config.json").read_text())
  return _loaded_without_video(
      transformers.LlavaOnevisionProcessor, directory, num_image_tokens=fields["num_image_tokens"],
      vision_feature_select_strategy=fields["vision_feature_select_strategy"],
      vision_aspect_ratio=fields["vision_aspect_ratio"])


def exported_equals(model: torch.nn.Module, directory: pathlib.Path) -> torch.nn.Module:
  """Loads the export in `directory` as `model`'s class and asserts its state dict equals
  `model`'s, name for name and bit for bit; returns the loaded model."""
  again = type(model).from_pretrained(directory)
  original, reloaded = model.state_dict(), again.state_dict()
  assert sorted(reloaded) == sorted(original)
  for name, value in reloaded.items():
    np.testing.assert_array_equal(value.numpy(), original[name].numpy(), err_msg=name)
  return again


def generate_records(directory: pathlib.Path, records: list, work: pathlib.Path, capsys,
                     max_new_tokens: int, batch_size: int = 3) -> tuple[dict, str]:
  """Runs `python -m mmjax.generate --input … --output …` in-process on `records` with the
  converted checkpoint `directory`: (its output lines by id, its stderr)."""
  from mmjax import generate  # Here: the other helpers need no mmjax.
  source, out = work / "records.jsonl", work / "answers.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in records))
  assert generate.main(["--checkpoint", str(directory), "--input", str(source), "--output",
                        str(out), "--batch_size", str(batch_size), "--max_new_tokens",
                        str(max_new_tokens)]) == 0
  return ({r["id"]: r for r in map(json.loads, out.read_text().splitlines())},
          capsys.readouterr().err)


def exported_round_trip(model: torch.nn.Module, mmjax_dir: pathlib.Path,
                        out: pathlib.Path) -> torch.nn.Module:
  """`python -m mmjax.convert --to_hf` of `mmjax_dir` into `out`, loaded back and checked equal to
  `model` bit for bit (`exported_equals`)."""
  from mmjax.convert import __main__ as convert_main  # Here: the other helpers need no mmjax.
  assert convert_main.main(["--to_hf", "--mmjax", str(mmjax_dir), "--out", str(out)]) == 0
  return exported_equals(model, out)


def assert_same_greedy(ours: np.ndarray, lengths: np.ndarray, generated: torch.Tensor,
                       prompt_length: int) -> None:
  """mmjax's greedy tokens [B, steps] equal transformers' `generate` output after the prompt
  (which stops when every row has: zero-padded to `steps`, as mmjax pads finished rows), and the
  longest row is a real answer, not one token repeated."""
  steps = ours.shape[1]
  new = generated[:, prompt_length:].numpy()
  np.testing.assert_array_equal(ours, np.pad(new, ((0, 0), (0, steps - new.shape[1]))))
  assert max(lengths) == steps and len(set(ours[np.argmax(lengths)])) > 5


# The form of OpenGVLab's InternVL3 (-hf) chat template: ChatML, an image as `<IMG_CONTEXT>\n`.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}")
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>",
                  "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


def save_internvl_processor(directory: pathlib.Path, tile: int, max_patches: int,
                            image_seq_length: int) -> None:
  """InternVL's processor files as its `save_pretrained` writes them (which fails without a video
  processor): `qwen2_tokenizer()` with InternVL's named image tokens, GOT-OCR2's image processor
  (ImageNet mean and std), `image_seq_length` tokens a tile, its chat template."""
  tok = qwen2_tokenizer()
  tok.add_special_tokens({"additional_special_tokens": QWEN2_VL_SPECIAL[1:] +
                          list(INTERNVL_NAMED.values())})
  tok.save_pretrained(directory)
  path = directory / "tokenizer_config.json"
  config = json.loads(path.read_text())
  path.write_text(json.dumps({**config, "extra_special_tokens": INTERNVL_NAMED}, indent=2))
  transformers.GotOcr2ImageProcessorPil(
      size={"height": tile, "width": tile}, max_patches=max_patches,
      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(directory)
  (directory / "processor_config.json").write_text(json.dumps(
      {"image_seq_length": image_seq_length, "processor_class": "InternVLProcessor"}))
  (directory / "chat_template.jinja").write_text(INTERNVL_CHAT_TEMPLATE)


def internvl_processor(directory: pathlib.Path) -> transformers.InternVLProcessor:
  fields = json.loads((directory / "processor_config.json").read_text())
  return _loaded_without_video(transformers.InternVLProcessor, directory,
                               image_seq_length=fields["image_seq_length"])


def assert_same_logits(model: torch.nn.Module, config, params, prompts, views,
                       hf_inputs: dict) -> None:
  """The MLLM's logits on left-padded `prompts` with `views` equal (≤ 1e-4) transformers' with
  `hf_inputs` (its pixel inputs) on the same ids, mask and positions; and are not all small."""
  import jax  # Here: the other helpers need no JAX.
  from mmjax import sampling
  from mmjax.models import mllm
  batch = sampling.pad_prompts(prompts)
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(batch["tokens"]).long(),
                attention_mask=torch.from_numpy(batch["segment_ids"]).long(),
                position_ids=torch.from_numpy(batch["positions"]).long(), **hf_inputs).logits
  logits, _ = jax.jit(mllm.MLLM(config).apply)({"params": params}, {**batch, **views})
  valid = batch["segment_ids"] == 1
  assert np.abs(ref.numpy()[valid]).max() > 1
  np.testing.assert_allclose(np.asarray(logits)[valid], ref.numpy()[valid], atol=1e-4, rtol=0)


def assert_same_generation(model: torch.nn.Module, config, params, prompts, views,
                           hf_inputs: dict, steps: int = 20) -> None:
  """`steps` greedy tokens of the MLLM for left-padded `prompts` in one batch equal
  transformers' `generate` (EOS 2, padding 0) on the same inputs (`assert_same_greedy`)."""
  from mmjax import sampling
  from mmjax.models import mllm
  ours, lengths = sampling.generate(mllm.MLLM(config), {"params": params}, prompts, views,
                                    max_new_tokens=steps, eos_id=2, pad_id=0, bucket=1)
  batch = sampling.pad_prompts(prompts)
  gen = transformers.GenerationConfig(max_new_tokens=steps, do_sample=False, eos_token_id=2,
                                      pad_token_id=0)
  with torch.no_grad():
    ref = model.generate(input_ids=torch.from_numpy(batch["tokens"]).long(),
                         attention_mask=torch.from_numpy(batch["segment_ids"]).long(),
                         generation_config=gen, **hf_inputs)
  assert_same_greedy(ours, lengths, ref, batch["tokens"].shape[1])


def assert_bfloat16_close(config, params, batch: dict) -> None:
  """The MLLM with bfloat16 weights and compute (`whole.override`) gives finite logits on `batch`
  within 5 % of the largest float32 logit (no parity bound in bfloat16)."""
  import jax  # Here: the other helpers need no JAX.
  import jax.numpy as jnp
  from mmjax.convert import whole
  from mmjax.models import mllm

  def logits(config, params):
    out, _ = jax.jit(mllm.MLLM(config).apply)({"params": params}, batch)
    return np.asarray(out, np.float32)

  ref = logits(config, params)
  half = whole.override(config, dtype="bfloat16", param_dtype="bfloat16")
  got = logits(half, jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params))
  assert np.isfinite(got).all()
  assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def converts_from_memory(model: torch.nn.Module, directory: pathlib.Path, params) -> list[str]:
  """`model.state_dict()`'s tensors (transformers 5's in-memory names) convert to the same
  `params` as the checkpoint saved in `directory`; returns those names."""
  import jax  # Here: the other helpers need no JAX.
  from mmjax.convert import hf
  hf_config, _ = hf.files.read_hf(directory)
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  _, again = hf.from_hf_tensors(hf_config, tensors)
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))
  return list(tensors)
