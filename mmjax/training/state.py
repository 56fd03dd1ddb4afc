"""The train state, created directly sharded over the mesh (never materialised on one device)."""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from mmjax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far.
  params: Any
  opt_state: Any


def abstract_params(model: nn.Module, example_batch: dict[str, Any]) -> Any:
  """Shapes and dtypes of the model's parameters, without allocating them."""
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), example_batch)["params"])


class Factory:
  """Builds train states of one (model, optimizer) pair on one mesh.

  The optimizer is initialised on the logically boxed parameters, so its moments inherit the
  parameters' axis names; `mmjax.sharding` turns those into `shardings`, and `jit` with
  `out_shardings` creates every array in place.
  """

  def __init__(self, model: nn.Module, tx: optax.GradientTransformation,
               example_batch: dict[str, Any], mesh: Mesh):
    self.model, self.tx, self.batch, self.mesh = model, tx, example_batch, mesh
    boxed = jax.eval_shape(self._boxed, jax.random.key(0), None, jnp.zeros((), jnp.int32))
    self.shardings = sharding.shardings(boxed, mesh)
    self.abstract = nn.unbox(boxed)

  def _boxed(self, rng, params, step):
    boxed = self.model.init(rng, self.batch)["params"]
    if params is not None:
      boxed = adopt(boxed, params)
    return TrainState(step=step, params=boxed, opt_state=self.tx.init(boxed))

  def create(self, rng: jax.Array, params: Any | None = None, step: int = 0) -> TrainState:
    """A fresh state with a new optimizer state: parameters from `params` where it has them (all,
    or some subtrees, e.g. only `tower`), from `rng` elsewhere."""
    with jax.set_mesh(self.mesh), sharding.axis_rules():
      return jax.jit(lambda r, p, s: nn.unbox(self._boxed(r, p, s)),
                     out_shardings=self.shardings)(rng, params, jnp.asarray(step, jnp.int32))


def adopt(boxed: Any, params: Any) -> Any:
  """`boxed` with the values of `params` (a full tree or some of its subtrees), keeping the boxes'
  logical axis names."""
  if isinstance(params, dict):
    return {k: adopt(v, params[k]) if k in params else v for k, v in boxed.items()}
  return boxed.replace_boxed(params) if isinstance(boxed, nn.Partitioned) else params


def count(tree: Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
