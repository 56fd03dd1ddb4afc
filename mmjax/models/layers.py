"""Layers shared by every model, each parameter annotated with logical axis names.

Logical names used across mmjax (mapped to mesh axes only in `mmjax/sharding.py`):
  batch, length (tokens), embed (model width), mlp (hidden width of MLPs), heads / kv_heads
  (attention heads), kv (per-head width), vocab, layers (stacked scan axis), conv_in / conv_out
  (channels of convolutions), conv_h / conv_w (kernel taps), height / width (feature-map axes).
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.shapes import Array, Float

Dtype = Any
Axes = tuple[str | None, ...]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form.
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP.
    "silu": nn.silu,
    "relu": nn.relu,
}


def activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def partitioned(init: Callable, axes: Axes) -> Callable:
  return nn.with_logical_partitioning(init, axes)


def constrain(x: Array, axes: Axes) -> Array:
  """Annotates an activation with logical axes (a no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, axes)


class DenseGeneral(nn.Module):
  """A linear map contracting the input axes `axis` with a kernel of shape [*in, *features].

  Unlike `nn.DenseGeneral`, the kernel is created at its full rank, so its logical axis names
  (input axes, then output axes) apply to the array as stored and sharded.
  """
  features: tuple[int, ...]
  kernel_axes: Axes
  axis: tuple[int, ...] = (-1,)
  use_bias: bool = True
  kernel_init: Callable | None = None  # None: LeCun normal over the true fan-in.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    axis = tuple(a % x.ndim for a in self.axis)
    n_in, n_out = len(axis), len(self.features)
    if len(self.kernel_axes) != n_in + n_out:
      raise ValueError(f"kernel_axes {self.kernel_axes} must name {n_in} input and {n_out} "
                       "output axes.")
    init = self.kernel_init or nn.initializers.lecun_normal(
        in_axis=tuple(range(n_in)), out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param("kernel", partitioned(init, self.kernel_axes),
                        tuple(x.shape[a] for a in axis) + self.features, self.param_dtype)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((axis, tuple(range(n_in))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros, self.kernel_axes[n_in:]),
                        self.features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def dense(features: int | Sequence[int], kernel_axes: Axes, *, name: str,
          axis: int | Sequence[int] = -1, use_bias: bool = True,
          kernel_init: Callable | None = None, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32) -> DenseGeneral:
  """A `DenseGeneral`; `kernel_axes` names the input axes followed by the output axes."""
  features = (features,) if isinstance(features, int) else tuple(features)
  axis = (axis,) if isinstance(axis, int) else tuple(axis)
  return DenseGeneral(features, tuple(kernel_axes), axis, use_bias, kernel_init, dtype,
                      param_dtype, name=name)


def layer_norm(*, name: str, epsilon: float = 1e-5, axis_name: str | None = "embed",
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  """LayerNorm with the two-pass variance of the torch reference (statistics in float32)."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=partitioned(nn.initializers.ones, (axis_name,)),
      bias_init=partitioned(nn.initializers.zeros, (axis_name,)), name=name)


class RMSNorm(nn.Module):
  """LLaMA's RMSNorm: normalise in float32, cast back, then scale (as the HF reference does)."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    scale = self.param("scale", partitioned(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.epsilon)
    return y.astype(self.dtype) * scale.astype(self.dtype)


class Mlp(nn.Module):
  """Two-layer MLP (ViT / CLIP style): Dense → activation → Dense."""
  hidden_dim: int
  act: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.hidden_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    h = constrain(activation(self.act)(h), ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(h)


class GatedMlp(nn.Module):
  """SwiGLU MLP of LLaMA / Qwen2: down(act(gate(x)) * up(x))."""
  hidden_dim: int
  act: str = "silu"
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype)
    gate = dense(self.hidden_dim, ("embed", "mlp"), name="gate", **kw)(x)
    up = dense(self.hidden_dim, ("embed", "mlp"), name="up", **kw)(x)
    h = constrain(activation(self.act)(gate) * up, ("batch", "length", "mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), name="down", **kw)(h)
