"""The part registries: every registered tower, connector and decoder meets its interface, a
class that does not is refused at registration, the MLLM hands a connector that reads text the
prompt's embeddings (the interface InstructBLIP's Q-Former needs) and a decoder that reads the
visual-token mask exactly the placeholders' positions (the interface of CogVLM's visual expert and
XComposer2's Partial LoRA)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import connectors
from mmjax.models import decoders
from mmjax.models import llm
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models.connectors import base as connector_base
from mmjax.models.decoders import base as decoder_base
from mmjax.models.towers import base as tower_base
from mmjax.training import build
from tests import method_configs
from tests import test_mllm


def test_every_registered_part_meets_its_interface():
  for name in towers.TOWERS:
    config = build.model_config(method_configs.get(name, "size=tiny"), 300).tower
    assert isinstance(config, towers.TowerConfig), name
    assert config.INPUTS and config.width > 0 and config.max_tokens > 0, name
    assert tower_base.name_of(config) == name
  for name, entry in connectors.CONNECTORS.items():
    assert isinstance(entry.config(), connectors.ConnectorConfig), name
  for name, entry in decoders.DECODERS.items():
    c = method_configs.get("vit", "size=tiny")
    c.model.llm.name = name
    config = build.model_config(c, 300).llm
    assert isinstance(config, decoders.DecoderConfig) and type(config) is entry.config, name
    assert config.vocab_size >= 300 and config.width == c.model.llm.width, name
    assert type(decoders.module_for(config)) is entry.module, name


def test_a_part_without_the_interface_or_a_taken_name_is_refused():
  @dataclasses.dataclass(frozen=True)
  class NoPolicy:
    INPUTS = ("images",)
    width: int = 8

  with pytest.raises(TypeError, match=r"NoPolicy lacks \['max_tokens', 'visual_tokens', "
                     r"'policy'\] of the TowerConfig interface"):
    tower_base.register("no_policy", NoPolicy, nn.Module, lambda *a: None)
  with pytest.raises(ValueError, match="'vit' is registered already"):
    tower_base.register("vit", towers.ViTTowerConfig, towers.ViTTower, lambda *a: None)
  with pytest.raises(TypeError, match=r"lacks \['READS_TEXT', 'num_tokens'\]"):
    connector_base.register("bad", NoPolicy, nn.Module, lambda b: None)
  with pytest.raises(TypeError, match=r"Decoder 'bad': NoPolicy lacks \['READS_VISUAL_MASK', "
                     r"'READS_MEMORY', 'vocab_size', 'position_axes', 'init_cache'\] of the "
                     r"DecoderConfig interface"):
    decoder_base.register("bad", NoPolicy, nn.Module, lambda *a: None)
  c = method_configs.get("vit", "size=tiny")
  c.model.llm.name = "gpt9"
  with pytest.raises(ValueError, match=r"Unknown decoder 'gpt9'; valid: \['llama'"):
    build.model_config(c, 300)


@dataclasses.dataclass(frozen=True)
class _TextMean:
  """A test connector: each feature projected, plus the mean of the prompt's embeddings."""
  READS_TEXT = True

  def num_tokens(self, tower_tokens: int) -> int:
    return tower_tokens


class _TextMeanModule(nn.Module):
  config: _TextMean
  out_dim: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, features, text, text_mask):
    mask = text_mask[..., None].astype(text.dtype)
    mean = (text * mask).sum(1, keepdims=True) / mask.sum(1, keepdims=True)
    return nn.Dense(self.out_dim, name="linear")(features) + mean


def test_a_connector_that_reads_text_gets_the_prompts_embeddings(rng):
  connector_base.register("text_mean", _TextMean, _TextMeanModule, lambda b: _TextMean())
  try:
    config = dataclasses.replace(test_mllm.TINY, connector=_TextMean())
    model = mllm.MLLM(config)
    batch = test_mllm._batch(rng, with_image=(True, True))
    params = nn.unbox(model.init(jax.random.key(0), batch))["params"]
    features = towers.tower_for(config.tower).apply({"params": params["tower"]},
                                                   batch["images"])
    tokens = batch["tokens"]
    is_visual = tokens == config.image_token_id
    table = params["llm"]["embedder"]["embedding"]
    text = table[jnp.where(is_visual, 0, tokens)]
    mask = (~is_visual)[..., None]
    mean = (text * mask).sum(1, keepdims=True) / mask.sum(1, keepdims=True)
    want = features @ params["projector"]["linear"]["kernel"] + \
        params["projector"]["linear"]["bias"] + mean
    got = model.apply({"params": params}, {k: batch[k] for k in ("images",)}, text,
                      ~is_visual, method=model.encode_images)
    np.testing.assert_allclose(got, want, atol=1e-5)
  finally:
    connector_base.REGISTRY.pop("text_mean")


@dataclasses.dataclass(frozen=True)
class _ShiftConfig(llm.LLMConfig):
  """A test decoder: LLaMA, with 1 added to the embeddings of visual tokens."""
  READS_VISUAL_MASK = True


class _Shift(llm.Decoder):
  config: _ShiftConfig

  def __call__(self, x, positions, segment_ids, cache=None, *, visual):
    return super().__call__(x + visual[..., None], positions, segment_ids, cache)


def test_a_decoder_that_reads_the_visual_mask_gets_the_placeholders_positions(rng):
  decoder_base.register("shift", _ShiftConfig, _Shift, lambda *a: None)
  try:
    config = dataclasses.replace(test_mllm.TINY, llm=_ShiftConfig(**test_mllm.TINY.llm.__dict__))
    batch = test_mllm._batch(rng, with_image=(True, False))
    model = mllm.MLLM(config)
    params = nn.unbox(model.init(jax.random.key(0), batch))["params"]
    got, _ = model.apply({"params": params}, batch)
    is_visual = batch["tokens"] == config.image_token_id
    assert is_visual[0].any() and not is_visual[1].any()
    x = model.apply({"params": params}, batch["tokens"],
                    {"images": batch["images"]}, method=model.embed)
    want, _, _ = llm.Decoder(test_mllm.TINY.llm).apply(
        {"params": params["llm"]}, x + is_visual[..., None], batch["positions"],
        batch["segment_ids"])
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain, _ = mllm.MLLM(test_mllm.TINY).apply({"params": params}, batch)
    assert not np.allclose(got[0], plain[0], atol=1e-3)  # The shift reached the decoder.
  finally:
    decoder_base.REGISTRY.pop("shift")


def test_a_decoder_reading_a_memory_no_tower_provides_is_refused():
  @dataclasses.dataclass(frozen=True)
  class Memory(llm.LLMConfig):
    READS_MEMORY = True

  with pytest.raises(ValueError, match="cross-attends to a memory stream .READS_MEMORY., and no "
                     "tower of this MLLM provides one"):
    dataclasses.replace(test_mllm.TINY, llm=Memory(**test_mllm.TINY.llm.__dict__))
