r"""Published weights by name, downloaded once, verified, converted once and reused.

  --config.init_checkpoint=torchvision:resnet50           # torchvision's DEFAULT weights
  --config.init_checkpoint=torchvision:resnet50.IMAGENET1K_V1
  --config.init_checkpoint=hf-hub:timm/resnet50.a1_in1k   # model.safetensors + config.json

`resnet_jax.predict --workdir=NAME`, `resnet_jax.export --workdir=NAME` and
`resnet_jax.convert --torch_checkpoint=NAME` take the same names.

Everything lives under `$RESNET_JAX_CACHE` (default ~/.cache/resnet_jax):
  torchvision/<file>.pth           as published; its SHA-256 must start with the hex
                                   digits in its name (as torch.hub checks them)
  hf-hub/<org>--<repo>/            model.safetensors and config.json (normalisation,
                                   class count and names, input size)
  converted/<name>/                the converted workdir that training and predict read
Each file is written under a temporary name and renamed when complete, so a
download or conversion that fails half way leaves nothing behind. Without a
network, put the file where the error message says and run again.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from resnet_jax.errors import UserError
from resnet_jax.interop import convert
from resnet_jax.models import zoo

CACHE_ENV = "RESNET_JAX_CACHE"
_HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX.
HF_FILES = ("model.safetensors", "config.json")


def cache_dir() -> str:
  return os.path.abspath(os.environ.get(CACHE_ENV) or
                         os.path.join(os.path.expanduser("~"), ".cache", "resnet_jax"))


def resolve(checkpoint: str) -> str:
  """A checkpoint path as given, or the converted workdir of the published weights it names."""
  if not zoo.is_pretrained_name(checkpoint):
    return checkpoint
  workdir = os.path.join(cache_dir(), "converted", _safe(checkpoint))
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    return workdir
  try:
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{_safe(checkpoint)}.", dir=os.path.dirname(workdir))
  except OSError as e:
    raise UserError(f"cannot write the cache {cache_dir()} ({e.strerror or e}): set "
                    f"{CACHE_ENV} to a writable directory") from None
  try:
    convert_named(checkpoint, staging)
    try:
      os.rename(staging, workdir)
    except OSError:  # Another process converted it first: theirs is as good.
      if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return workdir


def convert_named(name: str, output: str) -> convert.Architecture:
  """Converts the published weights `name` into the workdir `output`; returns the architecture."""
  if not output:
    raise UserError(f"pass --output=DIR to write the conversion of {name} to")
  convert.free_checkpoint_dir(output)  # Before the download, and again when writing.
  path, meta = weights_file(name)
  state_dict = convert.normalize_state_dict(convert.load_torch_file(path))
  arch = convert.resolve_architecture(state_dict)
  if meta.get("num_classes") and meta["num_classes"] != arch.num_classes:
    raise UserError(f"{name}: its config says {meta['num_classes']} classes but its weights "
                    f"hold {arch.num_classes}: delete {os.path.dirname(path)} and download again")
  variables = convert.from_torch_state_dict(state_dict, arch.model, arch.stem, arch.width,
                                            arch.num_classes)
  names = meta.get("class_names") or ()
  convert.save_converted(variables, output, arch.model, arch.stem, arch.width, arch.num_classes,
                         input_shape=meta.get("input_shape"), mean=meta.get("mean"),
                         std=meta.get("std"),
                         class_names=names if len(names) == arch.num_classes else ())
  return arch


def weights_file(name: str) -> tuple[str, dict[str, Any]]:
  """The local weights file of a published name (downloaded if needed) and its metadata."""
  if name.startswith(zoo.TORCHVISION_PREFIX):
    return _torchvision_file(name[len(zoo.TORCHVISION_PREFIX):])
  if name.startswith(zoo.HF_HUB_PREFIX):
    return _hf_hub_files(name[len(zoo.HF_HUB_PREFIX):])
  raise UserError(f"{name} is not a published name: use torchvision:MODEL or hf-hub:ORG/REPO")


# torchvision -------------------------------------------------------------------


def _torchvision_file(model: str) -> tuple[str, dict[str, Any]]:
  found = zoo.torchvision_weights(model)
  if found is None:
    raise UserError(f"torchvision has no weights {model!r} that resnet_jax converts: choose "
                    f"one of {', '.join(zoo.known_torchvision_names())}")
  model, member, file_name = found
  path = os.path.join(cache_dir(), "torchvision", file_name)
  url = zoo.torchvision_url(file_name)
  if not os.path.isfile(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial"
    try:
      _download(url, partial)
      _check_hash(partial, file_name, url, path)
      os.replace(partial, path)
    except UserError:
      raise
    except Exception as e:  # No network, HTTP errors, a connection cut half way, a full disk.
      raise UserError(f"cannot download {url} ({type(e).__name__}: {convert.first_line(e)}): "
                      f"download it yourself and put it at {path}") from None
    finally:
      if os.path.exists(partial):
        os.remove(partial)
  else:
    _check_hash(path, file_name, url, path)
  return path, {"num_classes": 1000, "mean": convert.IMAGENET_MEAN, "std": convert.IMAGENET_STD,
                "input_shape": (224, 224, 3), "class_names": _imagenet_categories(model, member)}


def _download(url: str, destination: str) -> None:
  """Copies url to destination (no retries: the caller names the file to fetch by hand)."""
  with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as f:
    shutil.copyfileobj(response, f, length=1 << 20)


def _check_hash(path: str, file_name: str, url: str, final: str) -> None:
  match = _HASH_PREFIX.search(file_name)
  if not match:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  if not digest.hexdigest().startswith(match[1]):
    raise UserError(f"{final} has SHA-256 {digest.hexdigest()[:12]}..., not the {match[1]}... "
                    f"its name promises (a damaged or foreign file): delete it and download "
                    f"{url} again")


def _imagenet_categories(model: str, member: str) -> list[str]:
  """ImageNet's class names from torchvision's weights enum, when torchvision imports."""
  try:
    import torchvision.models
    weights = torchvision.models.get_model_weights(model)[member]
    return list(weights.meta["categories"])
  except Exception:  # Optional: without torchvision, classes are named class_0, class_1, ...
    return []


# The Hugging Face hub ----------------------------------------------------------


def _hf_hub_files(repo_id: str) -> tuple[str, dict[str, Any]]:
  if repo_id.count("/") != 1 or not all(repo_id.split("/")):
    raise UserError(f"hf-hub:{repo_id} does not name a repository: use hf-hub:ORG/NAME, such "
                    "as hf-hub:timm/resnet50.a1_in1k")
  folder = os.path.join(cache_dir(), "hf-hub", repo_id.replace("/", "--"))
  missing = [f for f in HF_FILES if not os.path.isfile(os.path.join(folder, f))]
  if missing:
    _hf_download(repo_id, missing, folder)
  try:
    with open(os.path.join(folder, "config.json")) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {os.path.join(folder, 'config.json')} ({e}): delete it and "
                    "run again to download it afresh") from None
  return os.path.join(folder, "model.safetensors"), _timm_meta(config)


def _hf_download(repo_id: str, files: list[str], folder: str) -> None:
  import huggingface_hub
  from huggingface_hub import constants, errors
  urls = [f"{constants.ENDPOINT}/{repo_id}/resolve/main/{name}" for name in files]
  offline = _hub_unreachable(constants.ENDPOINT, constants.HF_HUB_OFFLINE)
  if offline:  # Say so at once: huggingface_hub would retry for about 25 s, then blame the file.
    raise UserError(f"cannot reach the Hugging Face hub ({offline}): download "
                    f"{' and '.join(urls)} yourself and put them in {folder}")
  os.makedirs(folder, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".download.", dir=folder)
  try:
    for name, url in zip(files, urls):
      try:
        downloaded = huggingface_hub.hf_hub_download(repo_id, name, local_dir=staging)
      except (errors.RepositoryNotFoundError, errors.GatedRepoError):
        raise UserError(f"hf-hub:{repo_id} does not exist on the Hugging Face hub (or needs a "
                        "login): check the name, such as hf-hub:timm/resnet50.a1_in1k") from None
      except errors.LocalEntryNotFoundError as e:  # A subclass of EntryNotFoundError: the network.
        raise UserError(f"cannot download {url} ({convert.first_line(e)}): download it "
                        f"yourself and put it at {os.path.join(folder, name)}") from None
      except errors.EntryNotFoundError:
        raise UserError(f"hf-hub:{repo_id} has no {name}: resnet_jax reads timm's layout "
                        f"({' and '.join(HF_FILES)})") from None
      except Exception as e:  # HTTP errors, cut downloads.
        raise UserError(f"cannot download {url} ({type(e).__name__}: {convert.first_line(e)}): "
                        f"download it yourself and put it at {os.path.join(folder, name)}"
                        ) from None
      os.replace(downloaded, os.path.join(folder, name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def _hub_unreachable(endpoint: str, offline: bool, timeout_s: float = 5.0) -> str | None:
  """Why the hub cannot be reached (HF_HUB_OFFLINE, no name resolution, no connection), or None."""
  if offline:
    return "HF_HUB_OFFLINE is set"
  parsed = urllib.parse.urlsplit(endpoint)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
  except OSError as e:
    return f"{parsed.hostname}:{port}: {e.strerror or type(e).__name__}"
  return None


def _timm_meta(config: Mapping[str, Any]) -> dict[str, Any]:
  """Normalisation, class count and names, input size from timm's config.json."""
  pretrained = config.get("pretrained_cfg", config)
  channels, height, width = pretrained.get("input_size", (3, 224, 224))
  names = config.get("label_names") or pretrained.get("label_names") or []
  return {"num_classes": config.get("num_classes") or pretrained.get("num_classes"),
          "mean": pretrained.get("mean"), "std": pretrained.get("std"),
          "input_shape": (height, width, channels), "class_names": list(names)}


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "--", name)
