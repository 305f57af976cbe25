"""The run directory: may it be written, does it hold this run, small atomic writes."""

import json
import os
import tempfile
from typing import Any

import ml_collections

from resnet_jax import configuration
from resnet_jax.errors import UserError


def writable(folder: str) -> bool:
  """Whether a folder can be written, found by trying: os.access says yes to root on read-only mounts."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".resnet_jax_write_test", dir=folder))
    return True
  except OSError:
    return False


def check(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that cannot be written or whose earlier run has other settings."""
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not writable(existing):
    raise UserError(f"workdir {workdir} cannot be created or written ({existing} is not a "
                    "writable folder): pass a writable --workdir")
  saved = configuration.read_saved(workdir)
  if saved is not None:
    configuration.check_same_architecture(saved, config, workdir)


def write_json(path: str, value: Any) -> None:
  """Writes JSON so that a reader never sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)
