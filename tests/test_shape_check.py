"""The shape annotations are checked in every test (tests/conftest.py's import hook): an axis
letter binds one size within a call, arrays of the wrong rank or dtype kind are refused, jax and
numpy arrays are both accepted, and plain Python hints are not checked."""
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

from mmjax.models import mllm
from mmjax.models import rope


def test_a_letter_binds_one_size_within_a_call():
  text, visual = np.zeros((2, 5, 4), np.float32), np.zeros((2, 3, 4), np.float32)
  mask = np.zeros((2, 5), bool)
  assert mllm.merge_embeddings(text, jnp.asarray(visual), mask).shape == (2, 5, 4)
  with pytest.raises(jaxtyping.TypeCheckError, match="visual"):  # B = 2, then 3.
    mllm.merge_embeddings(text, np.zeros((3, 3, 4), np.float32), mask)
  with pytest.raises(jaxtyping.TypeCheckError, match="is_visual"):  # L = 5, then 6.
    mllm.merge_embeddings(text, visual, np.zeros((2, 6), bool))


def test_rank_and_dtype_kind_are_checked():
  with pytest.raises(jaxtyping.TypeCheckError, match="positions"):
    rope.rope_angles(np.zeros((2, 5, 1), np.int32), 8, 10000.0)  # Int[B L], rank 3 given.
  with pytest.raises(jaxtyping.TypeCheckError, match="positions"):
    rope.rope_angles(np.zeros((2, 5), np.float32), 8, 10000.0)  # Int, floats given.


def test_plain_hints_are_not_checked():
  cos, _ = rope.rope_angles(np.zeros((2, 5), np.int32), 8, 10000)  # theta: float, int given.
  assert cos.shape == (2, 5, 8)
