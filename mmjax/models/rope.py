"""Rotary position embeddings (the HF "rotate_half" layout: frequencies repeated, not interleaved).

Three ways to turn positions into rotation angles, one per kind of sequence:
  * `rope_angles`: 1D text positions (LLaMA, Qwen2).
  * `mrope_angles`: Qwen2-VL's multimodal RoPE, positions (temporal, height, width) per token, the
    frequencies split into sections that each follow one of the three.
  * `axial_rope_angles`: Qwen2-VL's vision 2D RoPE, the first half of the frequencies (a set of
    head_dim/4) turned by the row, the second half by the column.
All give (cos, sin) of shape [B, L, Dh] for `apply_rope`.
"""
import jax.numpy as jnp

from mmjax.shapes import Array, Float, Int

Angles = tuple[Float[Array, "B L Dh"], Float[Array, "B L Dh"]]


def inverse_frequencies(head_dim: int, theta: float) -> Float[Array, "_half"]:
  if head_dim % 2:
    raise ValueError(f"Rotary embeddings need an even head_dim, got {head_dim}.")
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (theta ** exponents)


def _cos_sin(half: Float[Array, "B L _half"]) -> Angles:
  angles = jnp.concatenate([half, half], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def rope_angles(positions: Int[Array, "B L"], head_dim: int, theta: float) -> Angles:
  """cos and sin of the rotation angles for integer positions, in float32."""
  return _cos_sin(positions.astype(jnp.float32)[..., None] * inverse_frequencies(head_dim, theta))


def mrope_angles(positions: Int[Array, "3 B L"], head_dim: int, theta: float,
                 sections: tuple[int, ...]) -> Angles:
  """M-RoPE: frequency i (of head_dim/2) is turned by axis k of `positions` when it falls in the
  k-th of `sections` (Qwen2-VL: (16, 24, 24) = temporal, height, width for head_dim 128). Equal
  positions on every axis give exactly `rope_angles`."""
  if sum(sections) != head_dim // 2:
    raise ValueError(f"M-RoPE sections {sections} must sum to head_dim / 2 = {head_dim // 2}.")
  if positions.shape[0] != len(sections):
    raise ValueError(f"M-RoPE positions have {positions.shape[0]} axes but there are "
                     f"{len(sections)} sections.")
  axis = jnp.repeat(jnp.arange(len(sections)), jnp.array(sections),
                    total_repeat_length=head_dim // 2)
  chosen = jnp.take(positions, axis, axis=0)  # [Dh/2, B, L]: each frequency's own axis.
  half = jnp.moveaxis(chosen, 0, -1).astype(jnp.float32) * inverse_frequencies(head_dim, theta)
  return _cos_sin(half)


def axial_rope_angles(positions: Int[Array, "B L 2"], head_dim: int, theta: float) -> Angles:
  """2D RoPE of Qwen2-VL's ViT: head_dim/4 frequencies (those of a head_dim/2 rotary), turned by
  the row for the first quarter of the dims and by the column for the second, then repeated."""
  if head_dim % 4:
    raise ValueError(f"2D rotary embeddings need head_dim divisible by 4, got {head_dim}.")
  freqs = inverse_frequencies(head_dim // 2, theta)
  rows, cols = (positions[..., i].astype(jnp.float32)[..., None] * freqs for i in range(2))
  return _cos_sin(jnp.concatenate([rows, cols], axis=-1))


def apply_rope(x: Float[Array, "B L Nh Dh"], angles: Angles) -> Float[Array, "B L Nh Dh"]:
  cos, sin = angles
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
  return x * cos + rotated * sin
