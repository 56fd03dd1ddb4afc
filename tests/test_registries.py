"""The part registries: every registered tower and connector meets its interface, a class that
does not is refused at registration, and the MLLM hands a connector that reads text the prompt's
embeddings (the interface InstructBLIP's Q-Former needs)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import connectors
from mmjax.models import mllm
from mmjax.models import towers
from mmjax.models.connectors import base as connector_base
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
