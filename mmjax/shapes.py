"""Shape annotations: the array type mmjax's signatures annotate and its one set of axis letters.

`Float[Array, "B L D"]` reads "a float array of shape [batch, sequence, decoder width]". An
`Array` is a jax array (a tracer under `jit`) or a numpy array (a batch from the data pipeline,
a test's input): modules take both. The tests check every annotation of `mmjax` at call time
(`jaxtyping.install_import_hook` in tests/conftest.py), including that a letter means the same
size across the arguments and result of one call.

Axis letters (docs/design.md repeats them):

  B   rows of a batch                      L   decoder tokens of a row (text and placeholders)
  S   key / cache slots of a row           D   decoder width
  V   vocabulary                           Nh, Nk, Dh  query heads, key/value heads, head width
  N   a tower's tokens (patches, features) C   a tower's feature width (or a map's channels)
  M   a connector's tokens                 P   visual positions a tower writes (≤ its budget)
  K   views of one image (tiles, crops)    R   side of a square view, in pixels
  H W height and width (pixels or cells)   h w  the same after a stride, pooling or crop
  F   values of one flattened patch        n   layers of a stack
  Q A rows and answers of a classifier     3, 2, 4  fixed sizes (RGB; M-RoPE axes or (row,
                                                column); bilinear corners)

A name prefixed with `_` is not checked for agreement (a size that only one argument has).
"""
import jax
import numpy as np
from jaxtyping import Bool, Float, Int, PRNGKeyArray

Array = jax.Array | np.ndarray

__all__ = ["Array", "Bool", "Float", "Int", "PRNGKeyArray"]
