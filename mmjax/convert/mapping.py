"""Name-by-name mapping between a Hugging Face state dict and an mmjax parameter tree.

A converter lists `Rule`s; `import_tensors` and `export_params` apply them in either direction and
fail, listing the names, on tensors that are missing or that no rule consumes.
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def _identity(x: np.ndarray) -> np.ndarray:
  return x


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str  # Name in the Hugging Face state dict.
  path: tuple[str, ...]  # Path in the mmjax parameter tree (unrolled layout).
  to_mmjax: Transform = _identity
  to_hf: Transform = _identity


def linear_rules(hf: str, path: tuple[str, ...], in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...], bias: bool) -> list[Rule]:
  """A torch `nn.Linear` (weight [out, in]) as an mmjax DenseGeneral kernel [*in, *out]."""
  n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
  rules = [Rule(f"{hf}.weight", path + ("kernel",),
                lambda w: w.T.reshape(*in_shape, *out_shape),
                lambda k: k.reshape(n_in, n_out).T)]
  if bias:
    rules.append(Rule(f"{hf}.bias", path + ("bias",), lambda b: b.reshape(out_shape),
                      lambda b: b.reshape(n_out)))
  return rules


def norm_rules(hf: str, path: tuple[str, ...], bias: bool = True,
               scale_name: str = "scale") -> list[Rule]:
  rules = [Rule(f"{hf}.weight", path + (scale_name,))]
  if bias:
    rules.append(Rule(f"{hf}.bias", path + ("bias",)))
  return rules


def moved(rules: list[Rule], hf_name: Callable[[str], str],
          path_prefix: tuple[str, ...]) -> list[Rule]:
  """A part's rules inside a whole model: each HF name renamed by `hf_name`, each path under
  `path_prefix` (e.g. a CLIP's rules as a LLaVA's `model.vision_tower.…` → `tower/vit/…`)."""
  return [dataclasses.replace(r, hf=hf_name(r.hf), path=path_prefix + r.path) for r in rules]


def _unknown_error(kind: str, names: list[str]) -> ValueError:
  shown = ", ".join(sorted(names)[:20])
  more = f" (and {len(names) - 20} more)" if len(names) > 20 else ""
  return ValueError(f"{len(names)} {kind}: {shown}{more}.")


def import_tensors(tensors: dict[str, Any], rules: list[Rule]) -> dict[str, Any]:
  """HF tensors → nested mmjax params. Every rule must match and every tensor be consumed."""
  missing = [r.hf for r in rules if r.hf not in tensors]
  if missing:
    raise _unknown_error("tensors missing from the checkpoint", missing)
  used = {r.hf for r in rules}
  unknown = [k for k in tensors if k not in used]
  if unknown:
    raise _unknown_error("unknown tensors in the checkpoint (no mmjax parameter takes them)",
                         unknown)
  params: dict[str, Any] = {}
  for rule in rules:
    node = params
    for key in rule.path[:-1]:
      node = node.setdefault(key, {})
    node[rule.path[-1]] = np.ascontiguousarray(rule.to_mmjax(np.asarray(tensors[rule.hf])))
  return params


def export_params(params: dict[str, Any], rules: list[Rule]) -> dict[str, np.ndarray]:
  """Nested mmjax params (unrolled layout) → HF tensors. Every leaf must be exported."""
  flat = flatten(params)
  missing = ["/".join(r.path) for r in rules if r.path not in flat]
  if missing:
    raise _unknown_error("parameters missing from the mmjax tree", missing)
  used = {r.path for r in rules}
  unknown = ["/".join(p) for p in flat if p not in used]
  if unknown:
    raise _unknown_error("mmjax parameters with no Hugging Face name", unknown)
  return {r.hf: np.ascontiguousarray(r.to_hf(np.asarray(flat[r.path]))) for r in rules}


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out
