"""Data held in memory: TFDS image datasets loaded once as uint8 arrays.

`load_dataset` returns whole splits as numpy arrays (decoded once, then
cached as .npz beside the TFDS data so later runs load in seconds and
machines without TFDS can read them). Everything per step, batching by a
per-epoch permutation, random crop, flip, resize and normalisation, runs on
device inside the compiled step (`augment.py`).
"""

import dataclasses
import hashlib
import json
import os
import re
import socket
import zipfile

import numpy as np

from resnet_jax.errors import UserError

CACHE_FORMAT = 1


@dataclasses.dataclass
class Split:
  """One split of a dataset, whole, on the host."""
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]


@dataclasses.dataclass
class Dataset:
  """A train and an eval split with what the model needs to know of them."""
  name: str
  train: Split
  eval: Split
  num_classes: int
  class_names: list[str]
  mean: tuple[float, ...]  # per channel, pixel values in [0, 1]
  std: tuple[float, ...]


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _cache_path(data_dir: str, dataset: str, split: str) -> str:
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", split)
  digest = hashlib.sha1(split.encode()).hexdigest()[:8]
  return os.path.join(data_dir, "resnet_jax_cache", dataset, f"{safe}-{digest}.npz")


def _read_cache(path: str) -> tuple[Split, dict] | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f["meta"]))
      if meta.get("format") != CACHE_FORMAT:
        return None
      return Split(f["images"], f["labels"].astype(np.int32)), meta
  except (OSError, KeyError, ValueError, zipfile.BadZipFile):
    return None  # Absent or damaged: decode again.


def _write_cache(path: str, split: Split, meta: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, images=split.images, labels=split.labels,
           meta=np.array(json.dumps({**meta, "format": CACHE_FORMAT})))
  os.replace(tmp, path)  # Atomic: a killed run never leaves half a cache.


def _network_reachable(host: str = "storage.googleapis.com", port: int = 443,
                       timeout_s: float = 3.0) -> bool:
  try:
    socket.create_connection((host, port), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def _offline_message(dataset: str, data_dir: str) -> str:
  return (f"dataset {dataset!r} is not prepared in {data_dir} and cannot be downloaded "
          "(no network): copy its original archives (for cifar10, cifar-10-binary.tar.gz) "
          "into a folder and pass --config.manual_dir=FOLDER, or point "
          "--config.data_dir at a TFDS directory where it is already prepared")


def _tfds_builder(dataset: str, data_dir: str):
  import tensorflow_datasets as tfds  # Lazy: cached arrays need no TFDS.
  try:
    return tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {dataset!r}: use a TFDS image-classification "
                    "dataset name such as cifar10, cifar100, fashion_mnist or svhn_cropped")


def _prepare(builder, dataset: str, data_dir: str, manual_dir: str) -> None:
  """Downloads (or takes from manual_dir) and prepares the dataset once."""
  import tensorflow_datasets as tfds
  if builder.is_prepared():
    return
  if manual_dir:
    if not os.path.isdir(manual_dir):
      raise UserError(f"manual_dir {manual_dir} does not exist: pass the folder that "
                      f"holds {dataset}'s original archives")
  online = _network_reachable()
  if not manual_dir and not online:
    raise UserError(_offline_message(dataset, data_dir))
  if not online:
    # TFDS retries a failed download 10 times with backoff (minutes); offline,
    # an archive missing from manual_dir should fail at once instead.
    from tensorflow_datasets.core.download import downloader
    downloader.MAX_RETRIES = 0
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir or None, try_download_gcs=not manual_dir)
  try:
    builder.download_and_prepare(download_config=download_config)
  except (tfds.core.download.download_manager.NonMatchingChecksumError,
          AssertionError, FileNotFoundError, OSError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    hint = (f"check that {manual_dir} holds {dataset}'s original, unmodified archives"
            if manual_dir else _offline_message(dataset, data_dir))
    raise UserError(f"could not prepare {dataset!r} ({first_line}): {hint}") from None


def check_split_syntax(dataset: str, split: str) -> None:
  """Refuses a malformed split string before anything is downloaded (mock data accepts any)."""
  import tensorflow_datasets as tfds
  try:
    tfds.core.ReadInstruction.from_spec(split)
  except (ValueError, AssertionError) as e:
    raise UserError(f"split {split!r} of {dataset} is not valid ({str(e).splitlines()[-1]}): "
                    "use a TFDS split string such as 'train', 'test' or 'train[:10%]'")


def _decode_split(builder, split: str) -> Split:
  import tensorflow_datasets as tfds
  try:
    ds = builder.as_dataset(split=split, batch_size=4096, shuffle_files=False)
  except (ValueError, KeyError, AssertionError) as e:
    raise UserError(f"split {split!r} of {builder.name} is not valid ({str(e).splitlines()[0]}): "
                    f"use a TFDS split string such as 'train', 'test' or 'train[:10%]'")
  images, labels = [], []
  for chunk in tfds.as_numpy(ds):
    images.append(np.asarray(chunk["image"], np.uint8))
    labels.append(np.asarray(chunk["label"], np.int32))
  if not images:
    raise UserError(f"split {split!r} of {builder.name} is empty: choose a split that holds examples")
  return Split(np.concatenate(images), np.concatenate(labels))


def load_split(dataset: str, split: str, data_dir: str = "", manual_dir: str = "") -> tuple[Split, dict]:
  """Returns one split as uint8 arrays and its metadata (num_classes, class_names)."""
  data_dir = data_dir or default_data_dir()
  path = _cache_path(data_dir, dataset, split)
  cached = _read_cache(path)
  if cached is not None:
    return cached
  check_split_syntax(dataset, split)
  builder = prepare_tfds(dataset, data_dir, manual_dir)
  features = builder.info.features
  mocked = _is_mocked()
  result = _decode_split(builder, split)
  if result.images.ndim != 4:
    raise UserError(f"dataset {dataset!r} has images of shape {result.images.shape[1:]}: "
                    "images must all share one height, width and channel count")
  meta = {"dataset": dataset, "split": split, "version": str(builder.info.version),
          "num_classes": int(features["label"].num_classes),
          "class_names": list(features["label"].names)}
  if not mocked:
    _write_cache(path, result, meta)
  return result, meta


def _is_mocked() -> bool:
  """True inside tfds.testing.mock_data, whose random data must not be cached."""
  import tensorflow_datasets as tfds
  return tfds.core.DatasetBuilder.as_dataset.__module__ == "tensorflow_datasets.testing.mocking"


def load_dataset(config) -> Dataset:
  """Loads the train and eval splits named by the config."""
  train, meta = load_split(config.dataset, config.train_split, config.data_dir, config.manual_dir)
  eval_, _ = load_split(config.dataset, config.eval_split, config.data_dir, config.manual_dir)
  if len(train.labels) == 0 or len(eval_.labels) == 0:
    raise UserError(f"split {config.train_split!r} or {config.eval_split!r} of "
                    f"{config.dataset} is empty: choose splits that hold examples")
  mean, std = ((tuple(config.mean), tuple(config.std)) if config.mean
               else channel_stats(train.images))
  check_normalisation(config, mean, std, train.images.shape[-1])
  num_classes = config.num_classes or meta["num_classes"]
  return Dataset(config.dataset, train, eval_, num_classes, meta["class_names"], mean, std)


def check_normalisation(config, mean, std, channels: int) -> None:
  if len(mean) != channels or len(std) != channels:
    raise UserError(f"config.mean and config.std need {channels} values for {config.dataset} "
                    f"(got {len(mean)} and {len(std)})")


def cached_shape(dataset: str, split: str, data_dir: str = "") -> tuple[tuple[int, ...], int] | None:
  """(image shape, example count) of a split decoded by an earlier run, without loading it."""
  path = _cache_path(data_dir or default_data_dir(), dataset, split)
  try:
    with np.load(path, allow_pickle=False) as f:
      labels = f["labels"]
      header = f.zip.open("images.npy")
      version = np.lib.format.read_magic(header)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, _, _ = read_header(header)
      return tuple(shape[1:]), len(labels)
  except (OSError, KeyError, ValueError, zipfile.BadZipFile):
    return None


def prepare_tfds(dataset: str, data_dir: str = "", manual_dir: str = ""):
  """The TFDS builder of dataset, downloaded (or taken from manual_dir) and prepared once."""
  data_dir = data_dir or default_data_dir()
  builder = _tfds_builder(dataset, data_dir)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise UserError(f"dataset {dataset!r} has features {sorted(features.keys())}, not 'image' "
                    "and 'label': choose an image-classification dataset")
  if not _is_mocked():
    _prepare(builder, dataset, data_dir, manual_dir)
  return builder


def channel_stats(images_NHWC: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of uint8 images, in [0, 1] units."""
  pixels = images_NHWC.reshape(-1, images_NHWC.shape[-1])
  count = pixels.shape[0]
  total = pixels.sum(axis=0, dtype=np.float64)
  total_sq = np.einsum("nc,nc->c", pixels, pixels, dtype=np.float64)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
  return tuple(float(m / 255) for m in mean), tuple(float(s / 255) for s in std)


def pad_for_eval(split: Split, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads a split to whole batches; the mask is 1 for real examples, 0 for padding."""
  n = len(split.labels)
  padded = -(-n // batch_size) * batch_size
  pad = padded - n
  images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
  labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
  mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
  return images, labels, mask
