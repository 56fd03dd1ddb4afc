"""Answers a prompt about images with a converted checkpoint, streaming the answer to stdout.

  python -m mmjax.generate --checkpoint DIR --image cat.jpg --prompt "What is in the picture?"

DIR is a `python -m mmjax.convert --hf` output, which holds the model and its processor files
(tokenizer, chat template, image processor). The prompt is the user's message, wrapped by the
checkpoint's chat template with the assistant's turn opened, and each image goes before it as the
template places images; `--raw` passes the text as it is, with one `<image>` marker (the
checkpoint's image token) per `--image`. The answer is printed as it is generated, and nothing else
goes to stdout (logs and progress go to stderr), so the output can be compared and piped: it is
transformers' `decode(generated, skip_special_tokens=True)` followed by a newline.
"""
import argparse
import sys
from typing import Any

import numpy as np

from mmjax import cli
from mmjax import errors
from mmjax.convert import hf
from mmjax.data import hf_processor
from mmjax.data import images as images_lib
from mmjax.models import mllm


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mmjax.generate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="A converted checkpoint folder (python -m mmjax.convert --hf … --out).")
  parser.add_argument("--image", action="append", default=[],
                      help="An image file; repeat for several (the model's limit applies).")
  parser.add_argument("--prompt", required=True, help="The user's message.")
  parser.add_argument("--raw", action="store_true",
                      help="Use --prompt as the model's whole input text, without the chat "
                           "template; it holds one image marker per --image.")
  parser.add_argument("--max_new_tokens", type=int, default=256)
  parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default).")
  parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus mass; 1: off.")
  parser.add_argument("--top_k", type=int, default=0, help="0: off.")
  parser.add_argument("--seed", type=int, default=0, help="The sampling key's seed.")
  return parser


class _Stream:
  """Writes the decoded answer as tokens arrive. Decoding a prefix of the tokens need not give a
  prefix of the final text (a half-decoded UTF-8 character, a space that clean-up removes), so
  only the text before the last whitespace, and never a replacement character, is written until
  the end; `finish` writes the rest, so the whole output is exactly the final decode."""

  def __init__(self, processor: hf_processor.Processor, eos_id: int | None, out=None):
    self.processor, self.eos_id, self.out = processor, eos_id, out or sys.stdout
    self.ids: list[int] = []
    self.shown = ""
    self.stopped = False

  def __call__(self, step: Any, tokens: np.ndarray) -> None:
    del step
    if self.stopped:
      return
    token = int(np.asarray(tokens)[0])
    self.ids.append(token)
    self.stopped = token == self.eos_id
    text = self.processor.decode(self.ids)
    cut = max(text.rfind(" "), text.rfind("\n"))
    safe = text[:cut] if cut > 0 else ""
    if "\ufffd" not in safe[len(self.shown):] and safe.startswith(self.shown):
      self.out.write(safe[len(self.shown):])
      self.out.flush()
      self.shown = safe

  def finish(self, tokens: np.ndarray) -> str:
    """Writes what is left of the answer `tokens` (the loop's output, the same tokens)."""
    text = self.processor.decode(tokens)
    if not text.startswith(self.shown):  # Cannot happen with the rule above; never silently.
      raise RuntimeError(f"streamed text {self.shown!r} is not a prefix of the answer {text!r}")
    self.out.write(text[len(self.shown):] + "\n")
    self.out.flush()
    return text


def _check_model(config: Any, directory: str) -> None:
  if not isinstance(config, mllm.MLLMConfig):
    raise errors.InputError(errors.message(
        f"--checkpoint {directory}", f"holds a {type(config).__name__}, not a whole multimodal "
        "model", "convert a whole checkpoint (e.g. LlavaForConditionalGeneration)"))


def _main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  if args.max_new_tokens < 1:
    raise errors.ConfigError(errors.message(f"--max_new_tokens {args.max_new_tokens}",
                                            "must be at least 1"))
  with errors.expected(f"--checkpoint {args.checkpoint}"):
    config, params, arch = hf.load(args.checkpoint, "--checkpoint")
    _check_model(config, args.checkpoint)
    # The Hugging Face model type decides how transformers loads the tokenizer.
    model_type = hf.converter(arch).config_to_hf(config, arch)["model_type"]
    processor = hf_processor.Processor(args.checkpoint, model_type)
  if processor.image is not None and processor.image_token_id != config.image_token_id:
    raise errors.InputError(errors.message(
        f"--checkpoint {args.checkpoint}", f"its tokenizer's image token "
        f"{processor.image_token!r} is id {processor.image_token_id}, the model's "
        f"{config.image_token_id}"))
  pictures = [images_lib.load_image(path) for path in args.image]
  if len(pictures) > 1:
    raise errors.InputError(errors.message(
        f"{len(pictures)} --image", "this model reads one image per prompt in mmjax so far",
        "give one --image"))
  if args.raw:
    text = args.prompt
  else:
    content = [{"type": "image"}] * len(pictures) + [{"type": "text", "text": args.prompt}]
    with errors.expected(f"--checkpoint {args.checkpoint}'s chat template"):
      text = processor.apply_chat_template([{"role": "user", "content": content}])
  with errors.expected("--prompt"):
    inputs = processor(text, pictures)
  ids = inputs["input_ids"]
  views = None
  if pictures:
    pixels = inputs["pixel_values"]
    side = config.tower.image_size
    if pixels.shape[1:3] != (side, side):
      raise errors.InputError(errors.message(
          f"--checkpoint {args.checkpoint}", f"its image processor gives {pixels.shape[1]}×"
          f"{pixels.shape[2]} pixels, the model's tower reads {side}×{side}"))
    if int(np.sum(ids == config.image_token_id)) != config.max_visual_tokens:
      raise errors.InputError(errors.message(
          f"--checkpoint {args.checkpoint}", f"its processor writes "
          f"{int(np.sum(ids == config.image_token_id))} image tokens per image, the model "
          f"gives {config.max_visual_tokens} visual tokens"))
    views = pixels
  context = config.llm.max_positions
  if context and len(ids) >= context:
    raise errors.InputError(errors.message(
        "--prompt", f"is {len(ids)} tokens with its images, the model's context is {context}",
        "shorten the prompt"))
  max_new = min(args.max_new_tokens, context - len(ids)) if context else args.max_new_tokens
  if max_new < args.max_new_tokens:
    print(f"generating {max_new} tokens: the context ({context}) ends there", file=sys.stderr)
  import jax  # After the arguments are checked: importing jax starts its runtime.
  from mmjax import sampling
  eos = processor.eos_token_id
  stream = _Stream(processor, eos)
  with errors.expected("sampling"):
    tokens, lengths = sampling.generate(
        mllm.MLLM(config), {"params": params}, [ids], views, max_new_tokens=max_new,
        eos_id=eos, pad_id=0, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, rng=jax.random.key(args.seed), on_tokens=stream)
  stream.finish(tokens[0, :lengths[0]])
  return 0


def main(argv: list[str] | None = None) -> int:
  return cli.run(_main, argv)


if __name__ == "__main__":
  sys.exit(main())
