"""The LLaVA-style MLLM: vision tower → projector → visual tokens spliced into the text → LLM.

A batch is a flat dict of static-shape arrays:
  tokens [B L] (the image placeholder id once per visual token), positions [B L] (or [B L 3]
  for an M-RoPE LLM), segment_ids [B L] (0 = padding), targets [B L] (the next token),
  loss_mask [B L] (1 on answer tokens), and the tower's inputs: images [B H W 3] (normalised
  pixels), or a native-resolution tower's patches (the tower's `INPUTS`); ignored for rows
  without placeholders, so a batch can mix samples with and without an image.
With `max_images` N > 1, every view has an image axis after the batch axis ([B N H W 3], …) and
the batch holds `image_tokens` [B N]: the visual tokens each image gives the decoder (0 where a
row has fewer images). The images of a row are encoded as B·N rows of the tower, and their
tokens, in order, fill the row's placeholders.

The parts are chosen by their configs' types (each part's registry: `towers.base`,
`connectors.base`, `decoders.base`): this module never asks which part it holds, only what the
part declares it reads.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import connectors
from mmjax.models import decoders
from mmjax.models import layers
from mmjax.models import llm as llm_lib
from mmjax.models import towers
from mmjax.shapes import Array, Bool, Float, Int


@dataclasses.dataclass(frozen=True)
class MLLMConfig:
  tower: towers.TowerConfig = towers.ViTTowerConfig()  # Which vision tower, and its config.
  # The decoder (`mmjax.models.decoders`; LLaMA-2-7B / Vicuna-7B shape by default).
  llm: decoders.DecoderConfig = llm_lib.LLMConfig()
  # Tower features → the LLM's width (LLaVA-1.5's mlp2x_gelu projector by default).
  connector: connectors.ConnectorConfig = connectors.ProjectorConfig()
  image_token_id: int = -200  # Placeholder id in `tokens`; LLaVA uses -200 (outside the vocab).
  # True: image_token_id is a special token of the vocabulary that the tokenizer gives only for
  # the image marker (a converted Hugging Face checkpoint's "<image>", e.g. LLaVA-1.5's 32000);
  # its embedding row is read only where no image replaces it (a generated image token). False:
  # it must lie outside the vocabulary, so no text token can be taken for an image.
  image_token_in_vocab: bool = False
  # Images a row holds (static). 1: views without an image axis; N > 1: views [B, N, …] and
  # `image_tokens` [B, N] in the batch (multi-image conversations, interleaved documents).
  max_images: int = 1

  def __post_init__(self):
    inside = 0 <= self.image_token_id < self.llm.vocab_size
    if inside != self.image_token_in_vocab:
      raise ValueError(
          f"image_token_id={self.image_token_id} lies {'in' if inside else 'out'}side the "
          f"vocabulary [0, {self.llm.vocab_size}) but image_token_in_vocab="
          f"{self.image_token_in_vocab}: use an id outside it (LLaVA's -200), or a special token "
          "of the tokenizer with image_token_in_vocab=True.")
    if self.max_images < 1:
      raise ValueError(f"max_images={self.max_images} must be at least 1.")
    self.max_visual_tokens  # A connector that cannot take the tower's tokens fails here.
    if self.llm.READS_MEMORY:
      raise ValueError(f"The decoder {type(self.llm).__name__} cross-attends to a memory stream "
                       "(READS_MEMORY), and no tower of this MLLM provides one.")

  @property
  def image_visual_tokens(self) -> int:
    """The placeholders of one image: the connector's tokens for the tower's largest image."""
    return self.connector.num_tokens(self.tower.max_tokens)

  @property
  def max_visual_tokens(self) -> int:
    """The placeholders a row reserves: `image_visual_tokens` for each of its `max_images`."""
    return self.image_visual_tokens * self.max_images

  @property
  def view_keys(self) -> tuple[str, ...]:
    """The batch keys the model reads images from: the tower's inputs (and, with several images
    a row, `image_tokens`)."""
    return tuple(self.tower.INPUTS) + (("image_tokens",) if self.max_images > 1 else ())

  def image_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    """int [B]: the visual tokens each image gives the decoder, for views of one image a row
    (no image axis): what `image_tokens` holds for each image with several a row."""
    return np.asarray([self.connector.num_tokens(int(n))
                       for n in self.tower.visual_tokens(views)], np.int32)

  def visual_tokens(self, views: dict[str, np.ndarray]) -> np.ndarray:
    """int [B]: the visual tokens each row's views give the decoder (with several images a row,
    the sum of its `image_tokens`)."""
    if self.max_images > 1:
      if "image_tokens" not in views:
        raise ValueError(f"max_images={self.max_images}: the views need image_tokens [B, N].")
      return np.sum(views["image_tokens"], axis=1).astype(np.int32)
    return self.image_tokens(views)


def merge_embeddings(text: Float[Array, "B L D"], visual: Float[Array, "B N D"],
                     is_visual: Bool[Array, "B L"]) -> Float[Array, "B L D"]:
  """Writes row b's visual tokens, in order, into its placeholder positions.

  A row with placeholders has N of them, or fewer when the tower's token count depends on the
  image (native resolution: the first ones are the image's, the rest padding); a row with none
  keeps its text embeddings and ignores its visual tokens.
  """
  index = jnp.clip(jnp.cumsum(is_visual, axis=1) - 1, 0, visual.shape[1] - 1)
  gathered = jnp.take_along_axis(visual, index[..., None], axis=1)
  return jnp.where(is_visual[..., None], gathered.astype(text.dtype), text)


def compact_images(visual: Float[Array, "B N T D"], counts: Int[Array, "B N"]
                   ) -> Float[Array, "B M D"]:
  """Each row's images' tokens one after another, each image's first `counts` of its T (the
  rest is its padding), then zeros: [B, N·T, D], the order its placeholders read them in."""
  b, n, t, d = visual.shape
  counts = jnp.clip(counts.astype(jnp.int32), 0, t)
  ends = jnp.cumsum(counts, axis=1)  # [B, N]
  slots = jnp.arange(n * t)
  image = jnp.sum(slots[None, :, None] >= ends[:, None, :], axis=-1)  # [B, N·T]
  valid = image < n
  image = jnp.minimum(image, n - 1)
  start = jnp.take_along_axis(ends - counts, image, axis=1)
  index = image * t + jnp.clip(slots[None] - start, 0, t - 1)
  out = jnp.take_along_axis(visual.reshape(b, n * t, d), index[..., None], axis=1)
  return jnp.where(valid[..., None], out, 0).astype(visual.dtype)


class MLLM(nn.Module):
  config: MLLMConfig

  def setup(self):
    cfg = self.config
    self.tower = towers.tower_for(cfg.tower)
    # Named "projector" whatever the connector: LLaVA's parameter paths (`^projector/`).
    self.projector = connectors.module_for(cfg.connector, cfg.llm.width, dtype=cfg.llm.dtype,
                                           param_dtype=cfg.llm.param_dtype)
    self.llm = decoders.module_for(cfg.llm)

  def encode_images(self, views: dict[str, Array], text: Float[Array, "B L D"] | None = None,
                    text_mask: Bool[Array, "B L"] | None = None) -> Float[Array, "B M D"]:
    """Visual tokens in the LLM's embedding space, from the tower's inputs (its `INPUTS`);
    a connector that reads text also gets the prompt's embeddings and their mask. With several
    images a row, each image is a row of the tower and its tokens are compacted in order
    (`compact_images`)."""
    cfg = self.config
    inputs = [views[k] for k in cfg.tower.INPUTS]
    n = cfg.max_images
    if n > 1:
      inputs = [x.reshape(x.shape[0] * n, *x.shape[2:]) for x in inputs]
      if cfg.connector.READS_TEXT and text is not None:  # The row's prompt, for each image.
        text, text_mask = jnp.repeat(text, n, axis=0), jnp.repeat(text_mask, n, axis=0)
    features = self.tower(*inputs)
    if cfg.connector.READS_TEXT:
      if text is None:
        raise ValueError("This connector reads the prompt: encode_images needs its embeddings.")
      visual = self.projector(features, text, text_mask)
    else:
      visual = self.projector(features)
    if n == 1:
      return visual
    visual = visual.reshape(-1, n, *visual.shape[1:])
    return compact_images(visual, views["image_tokens"])

  def embed(self, tokens: Int[Array, "B L"], views: dict[str, Array] | None
            ) -> Float[Array, "B L D"]:
    is_visual = tokens == self.config.image_token_id
    # An image token of the vocabulary keeps its own embedding where no image replaces it (a
    # model may generate it, as transformers' embeds it then); -200 has no row to read.
    text = self.llm.embed(tokens if self.config.image_token_in_vocab
                          else jnp.where(is_visual, 0, tokens))
    if views is None:
      return text
    visual = self.encode_images(views, text, ~is_visual)
    return layers.constrain(merge_embeddings(text, visual, is_visual),
                            ("batch", "length", "embed"))

  def __call__(self, batch: dict[str, Array], cache: Any = None
               ) -> tuple[Float[Array, "B L V"], Any]:
    """Logits of the batch's rows, and the decoder's updated cache when given one."""
    keys = self.config.view_keys
    present = [k for k in keys if k in batch]
    if present and len(present) != len(keys):
      raise ValueError(f"The tower reads {list(keys)}; the batch has only {present}.")
    views = {k: batch[k] for k in keys} if present else None
    x = self.embed(batch["tokens"], views)
    positions = batch["positions"]
    if positions.ndim == 3:  # M-RoPE: [B, L, 3] in the batch (batch axis first), [3, B, L] here.
      positions = jnp.moveaxis(positions, -1, 0)
    reads = {}
    if self.config.llm.READS_VISUAL_MASK:
      reads["visual"] = batch["tokens"] == self.config.image_token_id
    logits, _, cache = self.llm(x, positions, batch["segment_ids"], cache, **reads)
    return logits, cache


def next_token_loss(logits: Float[Array, "B L V"], targets: Int[Array, "B L"],
                    loss_mask: Array) -> dict[str, Array]:
  """Cross-entropy on the masked (answer) tokens, in float32.

  Returns the mean `loss`, the `loss_sum` and the number of `tokens` it covers, so gradient
  accumulation and data-parallel reduction can weight micro-batches by their token counts.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  mask = loss_mask.astype(jnp.float32)
  total, count = jnp.sum(nll * mask), jnp.sum(mask)
  return {"loss": total / jnp.maximum(count, 1.0), "loss_sum": total, "tokens": count}
