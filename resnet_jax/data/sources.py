"""Every dataset as a random-access source: image files (a folder or a CSV) here, TFDS elsewhere.

`open_split` is where a run's data starts: every kind follows Grain's
`RandomAccessDataSource` protocol (`__len__`, `__getitem__`, plus `read` for a
reduced decode and `read_many` for batched reads), carries `labels`,
`class_names` and `image_shape()`, and pickles small (paths, not pixels),
since worker processes get it pickled. An image folder and a CSV (csv_labels.py)
differ only in how they list (paths, labels, class_names); `ImageFileSource`
decodes both, and a holdout (holdout.py) is a subset of either; TFDS datasets
are tfds_source.py's. Nothing here imports JAX or TensorFlow, so worker
processes start fast.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from resnet_jax.data import csv_labels, holdout, images
from resnet_jax.data.tfds_source import FOLDER_PREFIX, TfdsSource
from resnet_jax.errors import UserError

CSV_PREFIX = "csv:"
_FIX_BAD_IMAGE = "remove or replace it, then rerun the same command to resume"


def is_folder(dataset: str) -> bool:
  """True when `dataset` names an image folder (`folder:ROOT`)."""
  return dataset.startswith(FOLDER_PREFIX)


def is_csv(dataset: str) -> bool:
  """True when `dataset` names a CSV of pictures and labels (`csv:PATH`)."""
  return dataset.startswith(CSV_PREFIX)


def is_image_files(dataset: str) -> bool:
  """True for image files on disk (a folder or a CSV), False for a TFDS dataset.

  Image files are read afresh by every run (they may change) and never cached.
  """
  return is_folder(dataset) or is_csv(dataset)


@dataclasses.dataclass(frozen=True)
class SourceOptions:
  """The config fields that say how image files are labelled and split (default_config.py)."""
  train_split: str = "train"
  eval_split: str = "test"
  columns: csv_labels.Columns = csv_labels.Columns()

  @classmethod
  def of(cls, config) -> "SourceOptions":
    """The options a config sets (a ConfigDict, or any mapping with `get`)."""
    columns = {field: config.get(name, getattr(csv_labels.Columns, field))
               for field, name in csv_labels.Columns.CONFIG_FIELDS.items()}
    return cls(config.get("train_split", cls.train_split),
               config.get("eval_split", cls.eval_split), csv_labels.Columns(**columns))


@functools.cache
def image_extensions() -> frozenset[str]:
  """Lower-case file extensions Pillow can open (save-only formats such as .pdf excluded)."""
  return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                   if fmt in Image.OPEN)


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def load_image(path: str, max_side: int = 0) -> np.ndarray:
  """Decodes one image file to uint8 RGB [H, W, 3], EXIF orientation applied.

  Args:
    path: the image file.
    max_side: when set, a JPEG at least twice this size on its shorter side is
      decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, far cheaper than a full
      decode), keeping the shorter side >= max_side.
  """
  try:
    fast = images.decode_rgb_jpeg(path, max_side)
    if fast is not None:
      return fast
    with images.open_image(path, max_side) as image:
      return images.to_mode_array(image)
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


class ImageFileSource:
  """Pictures on disk and their labels, decoded to RGB; how they are listed is the subclass's.

  `labels` is indexed by row: int32 [N] indices into `class_names`, or, for a
  multi-label CSV, multi-hot float32 [N, C] (`multi_label`). `root` is the
  folder the pictures' identities (`keys`, used by holdouts) are relative to.
  """

  channels = 3

  def __init__(self, paths: list[str], labels: np.ndarray, class_names: list[str], split: str,
               root: str, max_side: int = 0):
    self.paths, self.labels, self.class_names = paths, labels, class_names
    self.split, self.root, self.max_side = split, root, max_side

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def multi_label(self) -> bool:
    """Whether a picture may have several classes: labels multi-hot [N, C]."""
    return self.labels.ndim == 2

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, index: int, max_side: int = 0) -> dict:
    """Example `index`, JPEGs decoded reduced when max_side allows (see `load_image`)."""
    return {"image": load_image(self.paths[index], max_side or self.max_side),
            "label": self.labels[index]}

  def __getitem__(self, index: int) -> dict:
    return self.read(index)

  def read_many(self, indices: Sequence[int], max_side: int = 0) -> list[dict]:
    return [self.read(int(i), max_side) for i in indices]

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

  def keys(self) -> list[str]:
    """Each picture's path relative to `root`: the same wherever the dataset is mounted."""
    return [os.path.relpath(path, self.root) for path in self.paths]

  def subset(self, indices: np.ndarray, split: str) -> "ImageFileSource":
    """The pictures at `indices`, in that order, as a split of their own (same classes)."""
    return ImageFileSource([self.paths[i] for i in indices], self.labels[indices],
                           self.class_names, split, self.root, self.max_side)


class FolderSource(ImageFileSource):
  """Images under ROOT/<split>/<class>/..., labelled by their sorted class folder names."""

  def __init__(self, root: str, split: str, max_side: int = 0):
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
      raise UserError(f"image folder {root} does not exist: pass an existing folder as "
                      f"--config.dataset={FOLDER_PREFIX}ROOT, with one subfolder per split")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise UserError(f"split folder {split_dir} does not exist: put one folder per class "
                      f"under {split_dir}, or set --config.train_split/--config.eval_split "
                      f"to an existing subfolder of {root} (or --config.eval_split=holdout:0.1 "
                      f"to hold out 10% of {split!r} where there is no other split)")
    with os.scandir(split_dir) as entries:
      class_names = sorted(e.name for e in entries if e.is_dir() and not _is_hidden(e.name))
    if not class_names:
      example = os.path.join(split_dir, "cat", "1.jpg")
      raise UserError(f"split folder {split_dir} has no class folders: put each class's "
                      f"images in its own subfolder, e.g. {example}")
    paths: list[str] = []
    labels = []
    for label, name in enumerate(class_names):
      files = _image_files(os.path.join(split_dir, name))
      if not files:
        raise UserError(f"class folder {os.path.join(split_dir, name)} holds no images: add "
                        "images (.jpg, .png, ...) to it or remove the folder")
      paths.extend(files)
      labels.append(np.full(len(files), label, np.int32))
    super().__init__(paths, np.concatenate(labels), class_names, split, root, max_side)


class CsvSource(ImageFileSource):
  """Pictures a CSV lists (csv_labels.py): its rows of `split`, classes from `train_split`'s."""

  def __init__(self, csv_path: str, split: str, train_split: str,
               columns: csv_labels.Columns = csv_labels.Columns(), max_side: int = 0):
    csv_path = os.path.abspath(os.path.expanduser(csv_path))
    paths, labels, class_names = csv_labels.read_split(csv_path, split, train_split, columns)
    super().__init__(paths, labels, class_names, split, os.path.dirname(csv_path), max_side)
    self.csv_path = csv_path


def _image_files(class_dir: str) -> list[str]:
  """Image files anywhere under class_dir, hidden ones skipped, in sorted path order."""
  extensions = image_extensions()
  found = []
  for folder, subfolders, files in os.walk(class_dir, followlinks=True):
    subfolders[:] = [d for d in subfolders if not _is_hidden(d)]
    found.extend(os.path.join(folder, f) for f in files
                 if not _is_hidden(f) and os.path.splitext(f)[1].lower() in extensions)
  return sorted(found)


def check_splits(dataset: str, options: SourceOptions) -> None:
  """Refuses a holdout that cannot be carved (a bad fraction, a TFDS dataset, train_split)."""
  if holdout.parse(options.train_split) is not None:
    raise UserError(f"train_split {options.train_split!r} is a holdout: a holdout is an eval "
                    "split; set --config.eval_split=holdout:F and --config.train_split to the "
                    "split it is carved from")
  if holdout.parse(options.eval_split) is not None and not is_image_files(dataset):
    # TFDS slices splits itself (unstratified): train[:90%] and train[90%:] are disjoint.
    raise UserError(f"eval_split {options.eval_split!r} holds out part of an image folder or "
                    f"CSV; {dataset} is a TFDS dataset: use one of its own splits, or slice one, "
                    "e.g. --config.train_split='train[:90%]' --config.eval_split='train[90%:]'")


def _strata(labels: np.ndarray) -> np.ndarray:
  """int [N] groups a holdout is stratified by: the class, or a multi-label row's set of classes."""
  if labels.ndim == 1:
    return labels
  return np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)


def _open_files(dataset: str, split: str, options: SourceOptions) -> ImageFileSource:
  if is_folder(dataset):
    return FolderSource(dataset[len(FOLDER_PREFIX):], split)
  return CsvSource(dataset[len(CSV_PREFIX):], split, options.train_split, options.columns)


def open_split(dataset: str, split: str, data_dir: str = "", manual_dir: str = "",
               options: SourceOptions | None = None) -> ImageFileSource | TfdsSource:
  """A random-access source for `split` of `dataset` (`folder:ROOT`, `csv:PATH` or a TFDS name).

  Args:
    dataset: config.dataset.
    split: a split name, or a holdout spec ("holdout:0.1"): that fraction of
      options.train_split, held out (holdout.py).
    data_dir: TFDS data directory.
    manual_dir: TFDS manual directory.
    options: the config's split and CSV fields (`SourceOptions.of(config)`); where
      options.eval_split is a holdout, options.train_split opens as the rest.
  """
  options = options or SourceOptions()
  check_splits(dataset, options)
  if not is_image_files(dataset):
    check_splits(dataset, dataclasses.replace(options, eval_split=split))  # A holdout refused.
    return TfdsSource(dataset, split, data_dir, manual_dir)
  held = holdout.parse(split)
  rest = holdout.parse(options.eval_split) if split == options.train_split else None
  if held is None and rest is None:
    return _open_files(dataset, split, options)
  base = _open_files(dataset, options.train_split, options)
  training, held_out = holdout.partition(_strata(base.labels), base.keys(), held or rest)
  if not len(held_out):
    spec = split if held is not None else options.eval_split
    raise UserError(f"{spec} of split {options.train_split!r} holds out "
                    f"no pictures: each class of it has a single picture; add pictures, or give "
                    f"{dataset} an eval split of its own")
  return base.subset(held_out if held is not None else training, split)
