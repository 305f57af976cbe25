"""Per-array checksums of a checkpoint's state, saved beside it to catch changed bytes.

Orbax notices a truncated or missing file, but changed bytes inside a data
file restore silently as other numbers; these sums catch them.
"""

from typing import Any

import jax
import numpy as np


def checksums(tree: Any) -> dict[str, int]:
  """Per array of tree, the sum of its bytes as uint32 words, modulo 2**32.

  Any single changed bit changes the sum. Computed on the host from the
  values in JAX's canonical dtype, so that a checkpoint restored with or
  without a target, on any devices, gives the same numbers.
  """
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.asarray(jax.device_get(leaf))
    array = np.ascontiguousarray(array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False))
    data = array.reshape(-1).view(np.uint8)
    data = np.concatenate([data, np.zeros(-data.size % 4, np.uint8)])
    sums[jax.tree_util.keystr(path)] = int(data.view("<u4").sum(dtype=np.uint64) % 2**32)
  return sums
