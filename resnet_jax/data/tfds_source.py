"""TFDS datasets: prepared once (downloaded, or taken from manual_dir), read by random access.

`prepare_tfds` runs TFDS's own preparation (which needs TensorFlow); a
dataset prepared as TFRecord gets ArrayRecord files beside it once
(`convert_to_array_record`), and `TfdsSource` then reads any split by index
without TensorFlow, as Grain's `RandomAccessDataSource` protocol asks. The
source pickles small (names, not pixels), since worker processes get it pickled.
"""

import functools
import os
import socket
import struct
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from resnet_jax.data.images import decode_bytes
from resnet_jax.errors import UserError

FOLDER_PREFIX = "folder:"  # Named in messages; sources.py defines what it means.
SPLIT_HINT = "use a TFDS split string such as 'train', 'test' or 'train[:10%]'"


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def is_mocked() -> bool:
  """True inside tfds.testing.mock_data, whose random data must not be prepared or cached."""
  import tensorflow_datasets as tfds
  return tfds.core.DatasetBuilder.as_data_source.__module__ == "tensorflow_datasets.testing.mocking"


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
                    "dataset name such as cifar10, cifar100, fashion_mnist or svhn_cropped, "
                    f"or {FOLDER_PREFIX}ROOT for an image folder") from None
  except (ValueError, TypeError, AssertionError) as e:  # A stray ':', '/' or '=' in the name.
    raise UserError(f"dataset name {dataset!r} is not valid ({_name_error(e)}): use a TFDS "
                    "name, optionally with a config and version, as NAME, NAME/CONFIG or "
                    f"NAME:1.2.3 (e.g. cifar10 or cifar10:3.0.2), or {FOLDER_PREFIX}ROOT for an "
                    "image folder") from None


def _name_error(e: BaseException) -> str:
  """What TFDS said about a dataset name, without its repeated preamble."""
  line = _first_line(e)
  if line.startswith("Parsing builder name string"):
    return "TFDS cannot parse it"
  return line.rsplit('": ', 1)[-1]  # After 'Failed to construct dataset "x", builder_kwargs "...": '


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
    first_line = _first_line(e)
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
                    f"{SPLIT_HINT}") from None


def prepare_tfds(dataset: str, data_dir: str = "", manual_dir: str = ""):
  """The TFDS builder of dataset, downloaded (or taken from manual_dir) and prepared once."""
  data_dir = data_dir or default_data_dir()
  builder = _tfds_builder(dataset, data_dir)
  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise UserError(f"dataset {dataset!r} has features {sorted(features.keys())}, not 'image' "
                    "and 'label': choose an image-classification dataset")
  if not is_mocked():
    _prepare(builder, dataset, data_dir, manual_dir)
  return builder


def _tfrecords(path) -> Iterator[bytes]:
  """Records of an uncompressed TFRecord file, read without TensorFlow (CRCs not checked)."""
  with path.open("rb") as f:
    while header := f.read(12):  # uint64 length, uint32 masked CRC of the length.
      (length,) = struct.unpack("<Q", header[:8])
      yield f.read(length)
      f.read(4)  # CRC of the data.


def convert_to_array_record(builder_dir: str) -> None:
  """Adds ArrayRecord shards beside a dataset prepared as TFRecord, in place.

  What `tfds convert_format` does, without Apache Beam (which its module
  imports) and without TensorFlow (which may grab a GPU before JAX).
  """
  from tensorflow_datasets.core import dataset_info, file_adapters
  from tensorflow_datasets.core.utils import py_utils
  info = dataset_info.read_proto_from_builder_dir(builder_dir)
  if info.file_format not in ("", "tfrecord"):
    raise UserError(f"dataset in {builder_dir} is stored as {info.file_format}, which cannot be "
                    "read by random access: prepare it again with the default format")
  splits = dataset_info.get_split_dict_from_proto(
      dataset_info_proto=info, data_dir=builder_dir, file_format=file_adapters.FileFormat.TFRECORD)
  for split in splits.values():
    source_template = split.filename_template
    target_template = source_template.replace(filetype_suffix="array_record")
    for shard in range(split.num_shards):
      target = target_template.sharded_filepath(shard_index=shard, num_shards=split.num_shards)
      if target.exists():
        continue  # Converted by an earlier, interrupted run.
      source = source_template.sharded_filepath(shard_index=shard, num_shards=split.num_shards)
      with py_utils.incomplete_file(target) as tmp:  # Atomic per shard.
        file_adapters.ArrayRecordFileAdapter.write_examples(tmp, enumerate(_tfrecords(source)))
  if "array_record" not in info.alternative_file_formats:
    info.alternative_file_formats.append("array_record")
    dataset_info.write_dataset_info_proto(info, dataset_info_dir=builder_dir)


class TfdsSource:
  """Random access to one split of a TFDS dataset, prepared first if needed (no TensorFlow to read)."""

  def __init__(self, name: str, split: str, data_dir: str = "", manual_dir: str = ""):
    import tensorflow_datasets as tfds
    data_dir = data_dir or default_data_dir()
    self.name, self.split = name, split
    mocked = is_mocked()
    check_split_syntax(name, split)  # Before anything is downloaded.
    builder = prepare_tfds(name, data_dir, manual_dir)
    if not mocked:
      builder = self._readable_builder(builder, name, data_dir, manual_dir)
    features = builder.info.features
    try:
      self._data = builder.as_data_source(split=split)
      # Encoded images: decoded here with Pillow, 3x faster than TFDS's own per-row decode,
      # and labels read without decoding at all (mock data cannot skip decoding).
      self._encoded = self._data if mocked else builder.as_data_source(
          split=split, decoders={"image": tfds.decode.SkipDecoding()})
      num_examples = len(self._data)  # A reversed slice such as train[5:2] fails only here.
    except (ValueError, KeyError, AssertionError) as e:
      if "0 length" in str(e):  # What TFDS says of a slice that selects nothing.
        num_examples = 0
      else:
        raise UserError(f"split {split!r} of {name} is not valid ({_first_line(e)}): "
                        f"{SPLIT_HINT}, naming one of its splits "
                        f"({', '.join(sorted(builder.info.splits))})") from None
    if num_examples == 0:
      raise UserError(f"split {split!r} of {name} is empty: choose a split that holds examples")
    self.class_names: list[str] = list(features["label"].names)
    self.num_classes: int = int(features["label"].num_classes)
    self.version = str(builder.info.version)
    self._shape = tuple(features["image"].shape)
    self.channels = self._shape[-1]
    self._batched_reads = not mocked  # Mock data sources lack __getitems__.

  @staticmethod
  def _readable_builder(builder, name: str, data_dir: str, manual_dir: str):
    """The builder of the prepared files, converted to ArrayRecord first if needed."""
    import tensorflow_datasets as tfds
    if not builder.is_prepared():
      how = (f"--config.input_pipeline=memory --config.manual_dir={manual_dir}" if manual_dir
             else "--config.input_pipeline=memory (which downloads it, or takes its archives "
             "from --config.manual_dir)")
      raise UserError(f"dataset {name!r} is not prepared in {data_dir}: prepare it once by "
                      f"running with {how}, then stream it")
    proto = builder.info.as_proto
    formats = {proto.file_format or "tfrecord", *proto.alternative_file_formats}
    if "array_record" not in formats and "parquet" not in formats:
      logging.warning("Converting %s in %s from TFRecord to ArrayRecord for random access "
                      "(once; the files are kept beside the TFRecord ones).", name,
                      builder.data_dir)
      convert_to_array_record(os.fspath(builder.data_dir))
    # A builder from the code keeps the file formats it was constructed with;
    # one read from the directory sees the ArrayRecord files just added.
    return tfds.builder_from_directory(builder.data_dir)

  def __len__(self) -> int:
    return len(self._data)

  def read(self, index: int, max_side: int = 0) -> dict:
    """Example `index`; max_side is accepted for symmetry with FolderSource and unused."""
    del max_side
    return self._example(self._encoded[index])

  def _example(self, example: dict) -> dict:
    image = example["image"]
    if isinstance(image, bytes):  # Encoded image features, when a decoder skips decoding.
      image = decode_bytes(image, self.channels)
    return {"image": np.asarray(image, np.uint8), "label": np.int32(example["label"])}

  def read_many(self, indices: Sequence[int], max_side: int = 0) -> list[dict]:
    """Examples at `indices`, in one batched read where the files allow it; max_side unused."""
    del max_side
    if not self._batched_reads:
      return [self.read(int(i)) for i in indices]
    return [self._example(row) for row in self._encoded.__getitems__([int(i) for i in indices])]

  def __getitem__(self, index: int) -> dict:
    return self.read(index)

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """All labels in order (read once, images not decoded)."""
    n, chunk = len(self._encoded), 4096
    if not self._batched_reads:
      return np.array([self._encoded[i]["label"] for i in range(n)], np.int32)
    labels = np.empty(n, np.int32)
    for start in range(0, n, chunk):
      rows = self._encoded.__getitems__(list(range(start, min(n, start + chunk))))
      labels[start:start + len(rows)] = [row["label"] for row in rows]
    return labels

  def image_shape(self, sample: int | None = None) -> tuple[int, int, int] | None:
    """(H, W, C) declared by the dataset, None when its images vary in size."""
    del sample
    return None if any(d is None for d in self._shape) else self._shape


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__
