"""A stack of identical blocks, unrolled or scanned, optionally rematerialised.

Blocks follow one protocol, `block(x, cache, *broadcast) -> (x, (hidden, new_cache))`, so both
layouts return every layer's `hidden` output (None when a block keeps none, as the LLM does to save
memory) and a per-layer cache, stacked on a leading axis. Parameters differ by
layout: unrolled `layers_{i}/…`, scanned `layers/…` with a leading `layers` axis
(`mmjax.convert.layout` moves between the two).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.shapes import Array, Float


class LayerStack(nn.Module):
  block: type[nn.Module]  # A module class whose only field is `config`.
  config: Any
  length: int
  scan: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: Float[Array, "B *rest"], cache: Any, *broadcast: Any
               ) -> tuple[Float[Array, "B *rest"], Float[Array, "n B *rest"] | None, Any]:
    block = self.block
    if self.remat:
      block = nn.remat(block, prevent_cse=not self.scan)
    if self.scan:
      scanned = nn.scan(
          block,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(0,) + (nn.broadcast,) * len(broadcast),
          length=self.length,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, (hidden, new_cache) = scanned(self.config, name="layers")(x, cache, *broadcast)
      return x, hidden, new_cache
    hiddens, caches = [], []
    for i in range(self.length):
      layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
      x, (h, c) = block(self.config, name=f"layers_{i}")(x, layer_cache, *broadcast)
      hiddens.append(h)
      caches.append(c)
    new_cache = None if cache is None else jax.tree.map(lambda *c: jnp.stack(c), *caches)
    hidden = None if hiddens[0] is None else jnp.stack(hiddens)
    return x, hidden, new_cache
