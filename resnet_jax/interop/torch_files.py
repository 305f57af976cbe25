"""Reading PyTorch weight files: .pth/.pt/.bin (with PyTorch) and .safetensors (without).

`normalize_state_dict` unwraps the containers training scripts save
({'state_dict': ...}, {'model': ...}) and DataParallel's `module.` prefix.
"""

import os
from collections.abc import Mapping
from typing import Any

from resnet_jax.errors import UserError

TORCH_EXTENSIONS = (".pth", ".pt", ".bin")  # torch.save's files; .bin as Hugging Face names them.
SAFETENSORS_EXTENSION = ".safetensors"
_WRAPPER_KEYS = ("state_dict", "model")
MAX_LISTED = 5


def load_torch_file(path: str) -> Mapping[str, Any]:
  """Reads a state_dict from .pth/.pt/.bin (needs PyTorch) or .safetensors (does not)."""
  if not os.path.isfile(path):
    raise UserError(f"PyTorch checkpoint {path} does not exist or is not a file: pass a "
                    f"{'/'.join(TORCH_EXTENSIONS)} or {SAFETENSORS_EXTENSION} file")
  extension = os.path.splitext(path)[1].lower()
  if extension == SAFETENSORS_EXTENSION:
    return _load_safetensors(path)
  if extension not in TORCH_EXTENSIONS:
    raise UserError(f"{path} has the unknown extension {extension or '(none)'!r}: pass a "
                    f"{', '.join(TORCH_EXTENSIONS)} or {SAFETENSORS_EXTENSION} file")
  try:
    import torch  # Lazy: an optional extra, needed only for pickled PyTorch files.
  except ImportError:
    raise UserError(f"reading {extension} files needs PyTorch: pip install -e '.[torch]' "
                    "(or pip install torch), or pass a .safetensors file") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # Truncated zips, pickles with code and foreign files all differ.
    raise UserError(f"could not read {path} as a PyTorch checkpoint "
                    f"({type(e).__name__}: {first_line(e)})") from None
  return loaded


def _load_safetensors(path: str) -> dict[str, Any]:
  import safetensors.flax
  import safetensors.numpy
  try:
    return safetensors.numpy.load_file(path)
  except TypeError:  # bfloat16, which numpy lacks; JAX's arrays have it.
    return safetensors.flax.load_file(path)
  except Exception as e:  # A truncated or foreign file: SafetensorError, OSError, ...
    raise UserError(f"could not read {path} as a safetensors file "
                    f"({type(e).__name__}: {first_line(e)})") from None


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Unwraps {'state_dict': ...} or {'model': ...} and strips DataParallel's `module.`."""
  if not isinstance(state_dict, Mapping):
    raise UserError(f"expected a state_dict (a mapping of names to tensors), got a "
                    f"{type(state_dict).__name__}: save model.state_dict(), not the model")
  while not any(isinstance(k, str) and k.split(".")[-1] in ("weight", "bias")
                for k in state_dict):
    inner = next((state_dict[k] for k in _WRAPPER_KEYS
                  if isinstance(state_dict.get(k), Mapping)), None)
    if inner is None:
      break
    state_dict = inner
  bad = [repr(k) for k in state_dict if not isinstance(k, str)]
  if bad:
    raise UserError(f"state_dict keys must be strings, not {', '.join(bad[:MAX_LISTED])}")
  return {(k[len("module."):] if k.startswith("module.") else k): v
          for k, v in state_dict.items()}


def first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else "no message"
