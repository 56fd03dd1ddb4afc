"""Moves parameters between the unrolled (`layers_{i}`) and scanned (`layers`, stacked) layouts.

Converters always produce the unrolled layout; `scan_layout` stacks every `layers_0..layers_{n-1}`
family into one `layers` subtree with a leading axis, and `unrolled_layout` undoes it.
"""
import re
from typing import Any

import jax
import numpy as np

_LAYER = re.compile(r"^layers_(\d+)$")


def scan_layout(tree: Any) -> Any:
  if not isinstance(tree, dict):
    return tree
  indices = sorted(int(m.group(1)) for k in tree if (m := _LAYER.match(k)))
  out = {k: scan_layout(v) for k, v in tree.items() if not _LAYER.match(k)}
  if indices:
    if indices != list(range(len(indices))):
      raise ValueError(f"Layer indices are not contiguous from 0: {indices}.")
    if "layers" in out:
      raise ValueError("A subtree holds both `layers` and `layers_{i}` entries.")
    layers = [scan_layout(tree[f"layers_{i}"]) for i in indices]
    out["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
  return out


def unrolled_layout(tree: Any) -> Any:
  if not isinstance(tree, dict):
    return tree
  out = {k: unrolled_layout(v) for k, v in tree.items() if k != "layers"}
  if "layers" in tree:
    stacked = tree["layers"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(n):
      out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: np.asarray(x[i]), stacked)
  return out
