"""Small random-init Hugging Face models for parity tests, saved as safetensors checkpoints."""
import pathlib

import tokenizers
import torch
import transformers
from tokenizers import decoders, models, normalizers, trainers


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
