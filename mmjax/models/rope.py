"""Rotary position embeddings (the HF "rotate_half" layout: frequencies repeated, not interleaved)."""
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def inverse_frequencies(head_dim: int, theta: float) -> Float[Array, "H/2"]:
  if head_dim % 2:
    raise ValueError(f"Rotary embeddings need an even head_dim, got {head_dim}.")
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (theta ** exponents)


def rope_angles(positions: Int[Array, "B T"], head_dim: int,
                theta: float) -> tuple[Float[Array, "B T H"], Float[Array, "B T H"]]:
  """cos and sin of the rotation angles for integer positions, in float32."""
  freqs = positions.astype(jnp.float32)[..., None] * inverse_frequencies(head_dim, theta)
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Float[Array, "B T N H"], cos: Float[Array, "B T H"],
               sin: Float[Array, "B T H"]) -> Float[Array, "B T N H"]:
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin
