"""Starting a run from pretrained variables: strict matching, head re-initialised on demand."""

from collections.abc import Mapping
from typing import Any

import flax.traverse_util as traverse_util
import numpy as np

from resnet_jax.errors import UserError

HEAD = "fc"


def is_head(path: tuple[str, ...]) -> bool:
  return path[0] == HEAD


def merge(fresh: Mapping[str, Any], loaded: Mapping[str, Any], source: str) -> tuple[dict, bool]:
  """Takes every array of `loaded` into the structure of `fresh`.

  The classifier head keeps its fresh initialisation when its shape differs
  (another number of classes); any other missing, extra or mis-shaped array
  is an error that names it. Returns the merged tree and whether the head
  was re-initialised.
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


def _to_dict(tree: Any) -> dict:
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
