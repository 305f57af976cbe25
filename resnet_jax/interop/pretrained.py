"""Starting a run from pretrained variables: strict matching, head re-initialised on demand.

RGB weights also start a grayscale model and the reverse: the first
convolution's kernel is summed over its 3 input channels (a gray image
replicated to RGB gives the same outputs), or repeated over 3 and divided
by 3 (an RGB image gives what its channel mean gives the gray model).
"""

from collections.abc import Mapping
from typing import Any

import flax.traverse_util as traverse_util
import jax
import numpy as np
from absl import logging

from resnet_jax.errors import UserError

HEAD = "fc"
# The first convolution, plain or ResNet-D's deep stem; HWIO: input channels on axis 2.
STEM_KERNELS = (("conv1", "kernel"), ("stem_conv1", "kernel"))


def is_head(path: tuple[str, ...]) -> bool:
  return path[0] == HEAD


def merge(fresh: Mapping[str, Any], loaded: Mapping[str, Any], source: str) -> tuple[dict, bool]:
  """Takes every array of `loaded` into the structure of `fresh`.

  The classifier head keeps its fresh initialisation when its shape differs
  (another number of classes); the stem's kernel is fitted between 1 and 3
  input channels; any other missing, extra or mis-shaped array is an error
  that names it. Returns the merged tree and whether the head was
  re-initialised.
  """
  fresh_flat = traverse_util.flatten_dict(dict(fresh))
  loaded_flat = traverse_util.flatten_dict(_to_dict(loaded))
  missing = sorted("/".join(p) for p in fresh_flat.keys() - loaded_flat.keys())
  extra = sorted("/".join(p) for p in loaded_flat.keys() - fresh_flat.keys())
  if missing or extra:
    parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + (
        [f"unexpected {', '.join(extra[:5])}"] if extra else [])
    raise UserError(f"init_checkpoint {source} does not fit this model ({'; '.join(parts)}): "
                    "set --config.model, --config.stem and --config.width to the checkpoint's")
  merged, head_reinitialised = {}, False
  for path, value in fresh_flat.items():
    array = np.asarray(loaded_flat[path])
    if path in STEM_KERNELS and array.shape != value.shape:
      array = _fit_input_channels(array, tuple(value.shape), source, path[0],
                                  report=not isinstance(value, jax.ShapeDtypeStruct))
    if array.shape != value.shape:
      if is_head(path):
        head_reinitialised = True
        merged[path] = value
        continue
      raise UserError(f"init_checkpoint {source}: layer {'/'.join(path)} has shape "
                      f"{array.shape}, the model expects {tuple(value.shape)}: set "
                      "--config.model, --config.stem and --config.width to the checkpoint's")
    merged[path] = array.astype(value.dtype)
  return traverse_util.unflatten_dict(merged), head_reinitialised


def _fit_input_channels(kernel_HWIO: np.ndarray, wanted: tuple[int, ...], source: str,
                        path_name: str, report: bool) -> np.ndarray:
  """The stem kernel for 1 input channel from 3 or the reverse; unchanged for other shapes."""
  have = kernel_HWIO.shape[2]
  if (kernel_HWIO.shape[:2] + kernel_HWIO.shape[3:] != wanted[:2] + wanted[3:]
      or {have, wanted[2]} != {1, 3}):
    return kernel_HWIO
  if have == 3:
    fitted = kernel_HWIO.sum(axis=2, keepdims=True)
    how = "summed over its 3 input channels for 1-channel images"
  else:
    fitted = np.repeat(kernel_HWIO, 3, axis=2) / 3
    how = "repeated over 3 input channels and divided by 3 for 3-channel images"
  if report:  # The trainer first merges onto shapes alone; only the real merge says it.
    logging.info("init_checkpoint %s: %s/kernel %s", source, path_name, how)
  return fitted.astype(kernel_HWIO.dtype)


def _to_dict(tree: Any) -> dict:
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
