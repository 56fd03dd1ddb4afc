"""LLaVA's `mm_projector`: each tower feature mapped to the LLM's width (the `mlp` connector)."""
import dataclasses
import re

import flax.linen as nn

from mmjax.models import layers
from mmjax.models.connectors import base
from mmjax.shapes import Array, Float

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def validate_projector(kind: str) -> None:
  if kind not in ("linear", "identity") and not _MLP.match(kind):
    raise ValueError(f"Unknown projector {kind!r}; valid: 'linear', 'identity' (towers that "
                     "project per encoder, as LEO) or 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu', "
                     "LLaVA-1.5's).")


class Projector(nn.Module):
  """'linear': one Linear. 'mlp<N>x_gelu': Linear, then N-1 × (GELU, Linear), as LLaVA builds it.
  'identity': nothing (the tower's features already have the LLM's width)."""
  kind: str
  out_dim: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Float[Array, "B N C"]) -> Float[Array, "B N D"]:
    validate_projector(self.kind)
    if self.kind == "identity":
      if x.shape[-1] != self.out_dim:
        raise ValueError(f"The identity projector needs features of the LLM's width "
                         f"{self.out_dim}, got {x.shape[-1]}.")
      return x
    depth = 1 if self.kind == "linear" else int(_MLP.match(self.kind).group(1))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(self.out_dim, ("vision_embed", "embed"), name="linear_0", **kw)(x)
    for i in range(1, depth):
      x = layers.activation("gelu")(x)
      x = layers.dense(self.out_dim, ("embed", "mlp"), name=f"linear_{i}", **kw)(x)
    return layers.constrain(x, ("batch", "length", "embed"))


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  kind: str = "mlp2x_gelu"  # "linear", "mlp<N>x_gelu" (LLaVA-1.5: mlp2x_gelu) or "identity".

  READS_TEXT = False

  def __post_init__(self):
    validate_projector(self.kind)

  def num_tokens(self, tower_tokens: int) -> int:
    return tower_tokens  # One token per feature.


def _module(config: ProjectorConfig, out_dim: int, **kw) -> Projector:
  return Projector(config.kind, out_dim, **kw)


def from_config(block) -> ProjectorConfig:
  """`c.model.connector`: `kind`."""
  return ProjectorConfig(block.kind)


base.register("mlp", ProjectorConfig, _module, from_config)
