"""Moves parameters between the unrolled (`layers_{i}`) and scanned (`layers`, stacked) layouts,
and between groupings of a ViT's blocks.

Converters always produce the unrolled layout; `scan_layout` stacks every `layers_0..layers_{n-1}`
family into one `layers` subtree with a leading axis, and `unrolled_layout` undoes it. A ViT's
blocks live in consecutive groups `blocks_{g}/layers_{j}` (`ViTConfig.layer_groups`: LLaVA-HR
splits its ViT at the adapters); `regroup_blocks` renumbers them into another grouping.
"""
import bisect
import re
from typing import Any, Iterable

import jax
import numpy as np

_LAYER = re.compile(r"^layers_(\d+)$")
_BLOCKS = re.compile(r"^blocks_(\d+)$")


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


def _block_position(key: tuple[str, ...]) -> tuple[int, int, int] | None:
  """(index of `blocks_{g}` in the path, g, j) for a path through `blocks_{g}/layers_{j}`."""
  for i in range(len(key) - 1):
    group, layer = _BLOCKS.match(key[i]), _LAYER.match(key[i + 1])
    if group and layer:
      return i, int(group.group(1)), int(layer.group(1))
  return None


def _group_sizes(keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], list[int]]:
  """Blocks per group (in group order), for every block stack among `keys` (by its path)."""
  layers: dict[tuple[str, ...], dict[int, set[int]]] = {}
  for key in keys:
    if (found := _block_position(key)) is not None:
      i, g, j = found
      layers.setdefault(key[:i], {}).setdefault(g, set()).add(j)
  return {prefix: [len(groups[g]) for g in sorted(groups)] for prefix, groups in layers.items()}


def regroup_blocks(flat: dict[tuple[str, ...], Any],
                   like: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], Any]:
  """`flat` (unrolled paths → arrays) with each stack of `blocks_{g}/layers_{j}` renumbered into
  the grouping the paths `like` hold for the same stack, block by block in order (a plain ViT's
  parameters into LLaVA-HR's split ViT, or back). Stacks of a different total depth, or absent
  from `like`, are left as they are (the caller's comparison of names reports them)."""
  have, want = _group_sizes(flat), _group_sizes(like)
  out = {}
  for key, value in flat.items():
    found = _block_position(key)
    if found is not None:
      i, g, j = found
      sizes, target = have[key[:i]], want.get(key[:i])
      if target is not None and sum(target) == sum(sizes) and target != sizes:
        index = sum(sizes[:g]) + j
        starts = [sum(target[:n]) for n in range(len(target))]
        group = bisect.bisect_right(starts, index) - 1
        key = key[:i] + (f"blocks_{group}", f"layers_{index - starts[group]}") + key[i + 2:]
    out[key] = value
  return out
