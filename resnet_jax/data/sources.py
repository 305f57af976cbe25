"""Random-access image sources for streaming: user image folders and prepared TFDS datasets.

Both follow Grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`)
and pickle small (paths, not pixels), since Grain workers start with spawn.
Nothing here imports JAX or TensorFlow, so worker processes start fast.
"""

import functools
import io
import math
import os
import struct
from collections.abc import Iterator

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from resnet_jax.errors import UserError

FOLDER_PREFIX = "folder:"
_FIX_BAD_IMAGE = "remove or replace it, then rerun the same command to resume"


def is_folder(dataset: str) -> bool:
  """True when `dataset` names an image folder (`folder:ROOT`) rather than a TFDS dataset."""
  return dataset.startswith(FOLDER_PREFIX)


@functools.cache
def image_extensions() -> frozenset[str]:
  """Lower-case file extensions Pillow can open (save-only formats such as .pdf excluded)."""
  return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                   if fmt in Image.OPEN)


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def _to_rgb_array(image: Image.Image) -> np.ndarray:
  """Any Pillow mode to uint8 RGB [H, W, 3]."""
  if image.mode == "RGB":
    return np.asarray(image)
  if image.mode.startswith("I"):
    # 16-bit grey (PNG, TIFF): Pillow's own conversion clips at 255, which
    # turns nearly every pixel white; scale the 16-bit range instead.
    grey = (np.clip(np.asarray(image, np.int64), 0, 65535) // 257).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")  # Through RGBA, as Pillow asks for palette transparency.
  # Alpha is dropped, as torchvision's loader does, so predictions match
  # models trained with it.
  return np.asarray(image.convert("RGB"))


def load_image(path: str, max_side: int = 0) -> np.ndarray:
  """Decodes one image file to uint8 RGB [H, W, 3], EXIF orientation applied.

  Args:
    path: the image file.
    max_side: when set, a JPEG at least twice this size on its shorter side is
      decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, far cheaper than a full
      decode), keeping the shorter side >= max_side.
  """
  try:
    with Image.open(path) as image:
      if max_side and image.format == "JPEG":
        image.draft(None, (max_side, max_side))
      ImageOps.exif_transpose(image, in_place=True)
      return _to_rgb_array(image)
  except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...).
    raise _decode_error(path, e) from None


def _decode_error(path: str, e: Exception) -> UserError:
  detail = (str(e).strip().splitlines() or ["unreadable"])[0].replace(f" {path!r}", "")
  return UserError(f"cannot decode {path} ({type(e).__name__}: {detail}): {_FIX_BAD_IMAGE}")


def _header_shape(path: str) -> tuple[int, int]:
  """(height, width) after EXIF orientation, from the file header alone."""
  with Image.open(path) as image:
    width, height = image.size
    if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # Orientation: rotated by 90 degrees.
      width, height = height, width
  return height, width


class FolderSource:
  """Images under ROOT/<split>/<class>/..., labelled by their sorted class folder names."""

  channels = 3

  def __init__(self, root: str, split: str, max_side: int = 0):
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
      raise UserError(f"image folder {root} does not exist: pass an existing folder as "
                      f"--config.dataset={FOLDER_PREFIX}ROOT, with one subfolder per split")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise UserError(f"split folder {split_dir} does not exist: put one folder per class "
                      f"under {split_dir}, or set --config.train_split/--config.eval_split "
                      f"to an existing subfolder of {root}")
    with os.scandir(split_dir) as entries:
      class_names = sorted(e.name for e in entries if e.is_dir() and not _is_hidden(e.name))
    if not class_names:
      example = os.path.join(split_dir, "cat", "1.jpg")
      raise UserError(f"split folder {split_dir} has no class folders: put each class's "
                      f"images in its own subfolder, e.g. {example}")
    self.root, self.split, self.max_side = root, split, max_side
    self.class_names: list[str] = class_names
    self.paths: list[str] = []
    labels = []
    for label, name in enumerate(class_names):
      files = _image_files(os.path.join(split_dir, name))
      if not files:
        raise UserError(f"class folder {os.path.join(split_dir, name)} holds no images: add "
                        "images (.jpg, .png, ...) to it or remove the folder")
      self.paths.extend(files)
      labels.append(np.full(len(files), label, np.int32))
    self.labels: np.ndarray = np.concatenate(labels)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, index: int, max_side: int = 0) -> dict:
    """Example `index`, JPEGs decoded reduced when max_side allows (see `load_image`)."""
    return {"image": load_image(self.paths[index], max_side or self.max_side),
            "label": self.labels[index]}

  def __getitem__(self, index: int) -> dict:
    return self.read(index)

  def image_shape(self, sample: int | None = None) -> tuple[int, int, int] | None:
    """(H, W, 3) when all images (or `sample` of them, evenly spaced) share one size, else None."""
    n = len(self.paths)
    indices = range(n) if not sample or sample >= n else np.linspace(0, n - 1, sample).astype(int)
    shapes = set()
    for i in indices:
      try:
        shapes.add(_header_shape(self.paths[i]))
      except Exception as e:  # Any header Pillow cannot parse.
        raise _decode_error(self.paths[i], e) from None
      if len(shapes) > 1:
        return None
    (height, width), = shapes
    return height, width, 3


def _image_files(class_dir: str) -> list[str]:
  """Image files anywhere under class_dir, hidden ones skipped, in sorted path order."""
  extensions = image_extensions()
  found = []
  for folder, subfolders, files in os.walk(class_dir, followlinks=True):
    subfolders[:] = [d for d in subfolders if not _is_hidden(d)]
    found.extend(os.path.join(folder, f) for f in files
                 if not _is_hidden(f) and os.path.splitext(f)[1].lower() in extensions)
  return sorted(found)


# TFDS -----------------------------------------------------------------------


def _default_data_dir() -> str:
  # Same default as input_pipeline.default_data_dir, not imported from there
  # because that module imports JAX, which workers would then load too.
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _is_mocked() -> bool:
  """True inside tfds.testing.mock_data."""
  import tensorflow_datasets as tfds
  return tfds.core.DatasetBuilder.as_data_source.__module__ == "tensorflow_datasets.testing.mocking"


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
  """Random access to one split of a prepared TFDS dataset (ArrayRecord files, no TensorFlow)."""

  def __init__(self, name: str, split: str, data_dir: str = "", manual_dir: str = ""):
    import tensorflow_datasets as tfds
    data_dir = data_dir or _default_data_dir()
    self.name, self.split = name, split
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise UserError(f"unknown dataset {name!r}: use a TFDS image-classification dataset "
                      f"name such as cifar10 or fashion_mnist, or {FOLDER_PREFIX}ROOT for an "
                      "image folder")
    mocked = _is_mocked()
    if not mocked:
      builder = self._readable_builder(builder, name, data_dir, manual_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
      raise UserError(f"dataset {name!r} has features {sorted(features.keys())}, not 'image' "
                      "and 'label': choose an image-classification dataset")
    try:
      self._data = builder.as_data_source(split=split)
      # Labels alone, without decoding images (mock data cannot skip decoding).
      self._label_data = self._data if mocked else builder.as_data_source(
          split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except (ValueError, KeyError, AssertionError) as e:
      raise UserError(f"split {split!r} of {name} is not valid ({str(e).splitlines()[0]}): "
                      "use a TFDS split string such as 'train', 'test' or 'train[:10%]'") from None
    if len(self._data) == 0:
      raise UserError(f"split {split!r} of {name} is empty: choose a split that holds examples")
    self.class_names: list[str] = list(features["label"].names)
    self.num_classes: int = int(features["label"].num_classes)
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
    example = self._data[index]
    image = example["image"]
    if isinstance(image, bytes):  # Encoded image features, when a decoder skips decoding.
      image = _decode_bytes(image, self.channels)
    return {"image": np.asarray(image, np.uint8), "label": np.int32(example["label"])}

  def __getitem__(self, index: int) -> dict:
    return self.read(index)

  @functools.cached_property
  def labels(self) -> np.ndarray:
    """All labels in order (read once, images not decoded)."""
    n, chunk = len(self._label_data), 4096
    if not self._batched_reads:
      return np.array([self._label_data[i]["label"] for i in range(n)], np.int32)
    labels = np.empty(n, np.int32)
    for start in range(0, n, chunk):
      rows = self._label_data.__getitems__(list(range(start, min(n, start + chunk))))
      labels[start:start + len(rows)] = [row["label"] for row in rows]
    return labels

  def image_shape(self, sample: int | None = None) -> tuple[int, int, int] | None:
    """(H, W, C) declared by the dataset, None when its images vary in size."""
    del sample
    return None if any(d is None for d in self._shape) else self._shape


def _decode_bytes(data: bytes, channels: int | None) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    if channels == 1:
      return np.asarray(image.convert("L"))[..., None]
    return _to_rgb_array(image)


def open_split(dataset: str, split: str, data_dir: str = "", manual_dir: str = ""
               ) -> FolderSource | TfdsSource:
  """A random-access source for `split` of `dataset` (`folder:ROOT` or a TFDS name)."""
  if is_folder(dataset):
    return FolderSource(dataset[len(FOLDER_PREFIX):], split)
  return TfdsSource(dataset, split, data_dir, manual_dir)


# Per-example resizing (runs in Grain workers) -------------------------------


def _resize(image_HWC: np.ndarray, size_hw: tuple[int, int],
            box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Bilinear, antialiased resize of image_HWC (or of its `box`, as left, top, right, bottom)."""
  height, width = size_hw
  channels = image_HWC.shape[-1]
  if channels == 3:
    planes = [Image.fromarray(image_HWC, "RGB")]
  else:  # One 8-bit plane each: Pillow has no mode for 2 channels, and premultiplies RGBA.
    planes = [Image.fromarray(np.ascontiguousarray(image_HWC[..., c]), "L")
              for c in range(channels)]
  resized = [np.asarray(p.resize((width, height), Image.Resampling.BILINEAR, box=box))
             for p in planes]
  return resized[0] if channels == 3 else np.stack(resized, axis=-1)


def resize_center_crop(image_HWC: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
  """Resizes the shorter side to round(size / crop_fraction), then crops the centre size x size."""
  height, width = image_HWC.shape[:2]
  if height == width == size and crop_fraction == 1.0:
    return image_HWC
  short = round(size / crop_fraction)
  if min(height, width) != short:
    scale = short / min(height, width)
    new_hw = (max(short, round(height * scale)), max(short, round(width * scale)))
    image_HWC = _resize(image_HWC, new_hw)
    height, width = new_hw
  top, left = (height - size) // 2, (width - size) // 2
  return image_HWC[top:top + size, left:left + size]


def random_resized_crop(image_HWC: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Inception-style crop (as torchvision's RandomResizedCrop), resized to size x size."""
  height, width = image_HWC.shape[:2]
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      break
  else:  # Fallback: the central crop with the aspect ratio clamped into `ratio`.
    if width / height < min(ratio):
      w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
      w, h = int(round(height * max(ratio))), height
    else:
      w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
  return _resize(image_HWC, (size, size), box=(left, top, left + w, top + h))
