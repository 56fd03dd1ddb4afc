"""The avg_pool connector: a window × window average of the tower's token grid, then the MLP
projector; equal to the same computation written out in numpy, and refused for token counts that
are no grid it can pool."""
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import config_args
from mmjax.models import connectors
from mmjax.models.connectors import avg_pool
from mmjax.training import build

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pools_each_window_then_projects(rng):
  config = avg_pool.AvgPoolConfig(window=2, kind="mlp2x_gelu")
  module = connectors.module_for(config, 8)
  x = rng.normal(size=(2, 16, 6)).astype(np.float32)  # A 4 × 4 grid, row-major.
  params = nn.unbox(module.init(jax.random.key(0), x))["params"]
  pooled = x.reshape(2, 2, 2, 2, 2, 6).mean(axis=(2, 4)).reshape(2, 4, 6)
  p = params["mlp"]
  h = pooled @ p["linear_0"]["kernel"] + p["linear_0"]["bias"]
  want = np.asarray(jax.nn.gelu(h, approximate=False)) @ p["linear_1"]["kernel"] + \
      p["linear_1"]["bias"]
  np.testing.assert_allclose(module.apply({"params": params}, x), want, atol=1e-5)
  # Token 0 of the output sees only tokens 0, 1, 4, 5 of the grid.
  moved = x.copy()
  moved[:, [2, 3, 6, 7, 8, 12]] += 1.0
  np.testing.assert_allclose(module.apply({"params": params}, moved)[:, 0],
                             module.apply({"params": params}, x)[:, 0], atol=1e-6)


def test_a_side_the_window_does_not_divide_ends_in_partial_windows(rng):
  """As torch's avg_pool2d(ceil_mode=True): 3 × 3 tokens → 2 × 2, the last row and column of
  windows averaging the tokens they hold."""
  config = avg_pool.AvgPoolConfig(window=2, kind="identity")
  module = connectors.module_for(config, 5)
  x = rng.normal(size=(1, 9, 5)).astype(np.float32)
  grid = x.reshape(3, 3, 5)
  want = np.stack([grid[:2, :2].mean((0, 1)), grid[:2, 2:].mean((0, 1)),
                   grid[2:, :2].mean((0, 1)), grid[2:, 2:].mean((0, 1))])[None]
  np.testing.assert_allclose(module.apply({}, x), want, atol=1e-6)


def test_counts_and_refuses_token_counts():
  config = avg_pool.AvgPoolConfig(window=2)
  assert [config.num_tokens(n) for n in (4, 9, 16, 49, 576)] == [1, 4, 4, 16, 144]
  for n in (15, 0):
    with pytest.raises(ValueError, match=f"avg_pool connector needs a square grid.*gives {n}"):
      config.num_tokens(n)


def test_config_gives_the_decoder_a_quarter_of_the_tokens():
  c = config_args.get_config(ROOT / "configs" / "llava15_pool.py", "size=tiny")
  plain = config_args.get_config(ROOT / "configs" / "llava15.py", "size=tiny")
  pooled, full = build.model_config(c, 300), build.model_config(plain, 300)
  assert full.tower == pooled.tower
  assert (full.max_visual_tokens, pooled.max_visual_tokens) == (16, 4)
  assert build.max_len(plain, full) - build.max_len(c, pooled) == 12
