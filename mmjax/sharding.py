"""Device meshes and the one table mapping logical axis names to mesh axes.

Every parameter and main activation in `mmjax.models` carries logical names (see
`mmjax/models/layers.py`); this file alone decides how they are laid out over the mesh
axes `data` (pure data parallelism), `fsdp` (data parallelism with sharded parameters and
optimizer state) and `tensor` (Megatron-style model parallelism).
"""
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axis or axes), in order of precedence: an array dimension takes the first
# rule whose mesh axes are still free in that array, so `batch` claims data+fsdp on activations
# and `embed` falls back to unsharded there, while parameters (no batch) shard `embed` on fsdp.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("conv_out", "tensor"),
    ("conv_in", "fsdp"),
    ("length", None),
    ("kv", None),
    ("layers", None),
    ("conv_h", None),
    ("conv_w", None),
    ("height", None),
    ("width", None),
)
LOGICAL_NAMES = frozenset(name for name, _ in LOGICAL_RULES)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one entry may be -1, meaning all remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"Mesh shape {shape} must have one entry per axis {MESH_AXES}.")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"Mesh shape {shape}: entries must be positive, with at most one -1.")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"Mesh shape {shape} does not divide {len(devices)} devices.")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"Mesh shape {shape} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}.")
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def check_names(boxed_tree: Any) -> None:
  """Raises if a logically partitioned leaf uses a name the rule table does not know."""
  unknown = set()
  for leaf in jax.tree.leaves(boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    if isinstance(leaf, nn.Partitioned):
      unknown |= {n for n in leaf.names if n is not None and n not in LOGICAL_NAMES}
  if unknown:
    raise ValueError(f"Logical axis names {sorted(unknown)} have no rule in "
                     f"mmjax.sharding.LOGICAL_RULES; known: {sorted(LOGICAL_NAMES)}.")


def shardings(boxed_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (e.g. `jax.eval_shape` of
  `init`); plain leaves are replicated."""
  check_names(boxed_tree)
  specs = nn.get_partition_spec(boxed_tree)
  specs = nn.logical_to_mesh(specs, LOGICAL_RULES)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over the data-parallel axes on their leading dimension."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def axis_rules():
  """Context for `nn.with_logical_constraint` on activations inside jit."""
  return nn.logical_axis_rules(LOGICAL_RULES)


def num_batch_shards(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
