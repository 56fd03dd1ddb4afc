"""Small random-init Hugging Face models for parity tests, saved as safetensors checkpoints."""
import json
import pathlib
from unittest import mock

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


def qwen2_vl_processor(directory: pathlib.Path) -> transformers.Qwen2VLProcessor:
  """transformers' Qwen2VLProcessor of the tokenizer, image processor and chat template loaded
  back from `directory` (with a qwen2_vl config.json there, as transformers loads a checkpoint),
  its missing video processor allowed."""
  check = transformers.ProcessorMixin.check_argument_for_proper_class

  def allow_no_video(self, name, arg):
    return None if name == "video_processor" and arg is None else check(self, name, arg)

  with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class",
                         allow_no_video):
    return transformers.Qwen2VLProcessor(
        image_processor=transformers.AutoImageProcessor.from_pretrained(directory),
        tokenizer=transformers.AutoTokenizer.from_pretrained(directory),
        chat_template=(directory / "chat_template.jinja").read_text())


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
