"""The memory pipeline: a source decoded whole, once, as uint8 arrays held on every device.

`load_split` decodes every example of a source (`sources.open_split`) with
batched reads over a thread pool; a TFDS split is then cached as .npz beside
the TFDS data, so later runs load in seconds and machines without TFDS can
read it. Everything per step, batching by a per-epoch permutation, random
crop, flip, resize and normalisation, runs on device inside the compiled step
(`augment.py`).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import zipfile

import numpy as np

from resnet_jax.data import images, sources, tfds_source
from resnet_jax.errors import UserError

CACHE_FORMAT = 1
DECODE_CHUNK = 1024  # Examples per batched read.
DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass
class Split:
  """One split of a dataset, whole, on the host."""
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N], or float32 [N, C] multi-hot (a multi-label CSV)
  class_names: list[str] | None = None


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


def decode_source(source, size: "int | tuple[int, int]" = 0, crop_fraction: float = 1.0,
                  indices: np.ndarray | None = None, threads: int = DECODE_THREADS) -> Split:
  """The examples of a source (all, or those at `indices`) in order, framed to size when set.

  `size` is a side or (height, width). Batched reads (`read_many`) in chunks
  over a thread pool: Pillow's decode and resize, and ArrayRecord's reads,
  release the GIL.
  """
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  size_hw = (size, size) if isinstance(size, int) else tuple(size)
  # Decoded no larger than framing needs, as the stream pipeline and predict decode it.
  max_side = images.cover_side(*size_hw, crop_fraction) if size else 0
  read_many = getattr(source, "read_many", None) or (
      lambda ids, _: [source[int(i)] for i in ids])

  def chunk(start: int) -> list[np.ndarray]:
    rows = read_many(indices[start:start + DECODE_CHUNK].tolist(), max_side)
    return [images.frame(r["image"], *size_hw, crop_fraction) if size else
            np.asarray(r["image"], np.uint8) for r in rows]

  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    decoded = [image for part in pool.map(chunk, range(0, len(indices), DECODE_CHUNK))
               for image in part]
  if len({image.shape for image in decoded}) > 1:
    name = getattr(source, "name", "the dataset")
    raise UserError(f"the images of {name} differ in size: set --config.image_size to hold them "
                    "in memory at one size, or --config.input_pipeline=stream")
  labels = np.asarray(source.labels)  # Multi-hot rows stay float32.
  labels = labels if labels.ndim == 2 else labels.astype(np.int32)
  return Split(np.stack(decoded), labels[indices], list(source.class_names))


def load_split(dataset: str, split: str, data_dir: str = "", manual_dir: str = "",
               size: "int | tuple[int, int]" = 0, crop_fraction: float = 1.0,
               options: "sources.SourceOptions | None" = None) -> tuple[Split, dict]:
  """One split decoded whole as uint8 arrays, with its metadata (num_classes, class_names).

  An image folder or CSV is read afresh (its files may change) and framed to
  size x size when size is set. A TFDS split keeps its own size unless its
  images differ in size (then framed to size), and is cached as .npz beside
  the TFDS data after the first decode. `options`: as `sources.open_split`.
  """
  data_dir = data_dir or tfds_source.default_data_dir()
  folder = sources.is_image_files(dataset)
  path = None if folder else _cache_path(data_dir, dataset, split)
  cached = _read_cache(path) if path else None
  if cached is not None:
    cached[0].class_names = list(cached[1]["class_names"])
    return cached
  source = sources.open_split(dataset, split, data_dir, manual_dir, options)
  if not folder and source.image_shape() is not None:
    size = 0  # Cached at its own size; the device resizes to image_size.
  result = decode_source(source, size, crop_fraction)
  meta = {"dataset": dataset, "split": split, "version": getattr(source, "version", ""),
          "num_classes": source.num_classes, "class_names": list(source.class_names)}
  if size:
    return result, {**meta, "framed": True}
  if path and not tfds_source.is_mocked():
    _write_cache(path, result, meta)
  return result, meta


def load_dataset(config) -> Dataset:
  """The train and eval splits named by the config, decoded whole.

  A folder's images are framed to config.image_size as they load (a TFDS
  dataset's only where its images differ in size; else the device resizes).
  """
  folder = sources.is_image_files(config.dataset)
  size = config.image_size
  train, meta = load_split(config.dataset, config.train_split, config.data_dir,
                           config.manual_dir, size, options=sources.SourceOptions.of(config))
  eval_size = size or train.images.shape[1]
  eval_, eval_meta = load_eval_split(config, (eval_size, eval_size))
  if folder and eval_meta["class_names"] != meta["class_names"]:
    raise UserError(f"the class folders of {config.eval_split!r} ({len(eval_meta['class_names'])}) "
                    f"differ from those of {config.train_split!r} "
                    f"({len(meta['class_names'])}): give both splits the same classes")
  mean, std = ((tuple(config.mean), tuple(config.std)) if config.mean
               else channel_stats(train.images))
  check_normalisation(config, mean, std, train.images.shape[-1])
  num_classes = config.num_classes or meta["num_classes"]
  return Dataset(config.dataset, train, eval_, num_classes, meta["class_names"], mean, std)


def load_eval_split(config, size_hw: tuple[int, int]) -> tuple[Split, dict]:
  """The eval split framed to size_hw at the eval crop fraction, as the stream pipeline frames it."""
  fraction = images.eval_crop_fraction(config)
  split, meta = load_split(config.dataset, config.eval_split, config.data_dir, config.manual_dir,
                           size_hw, fraction, sources.SourceOptions.of(config))
  if not meta.get("framed") and (split.images.shape[1:3] != tuple(size_hw) or fraction != 1.0):
    # A TFDS split at its own size (cached): framed here, once.
    split.images = np.stack([images.frame(image, *size_hw, fraction) for image in split.images])
  return split, meta


def check_normalisation(config, mean, std, channels: int) -> None:
  if len(mean) != channels or len(std) != channels:
    raise UserError(f"config.mean and config.std need {channels} values for {config.dataset} "
                    f"(got {len(mean)} and {len(std)})")


def cached_shape(dataset: str, split: str, data_dir: str = "") -> tuple[tuple[int, ...], int] | None:
  """(image shape, example count) of a split decoded by an earlier run, without loading it."""
  path = _cache_path(data_dir or tfds_source.default_data_dir(), dataset, split)
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
  labels = np.concatenate([split.labels, np.zeros((pad, *split.labels.shape[1:]),
                                                  split.labels.dtype)])
  mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
  return images, labels, mask
