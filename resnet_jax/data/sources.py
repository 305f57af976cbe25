"""Every dataset as a random-access source: an image folder here, a TFDS dataset in tfds_source.

`open_split` is where a run's data starts: both kinds follow Grain's
`RandomAccessDataSource` protocol (`__len__`, `__getitem__`, plus `read` for a
reduced decode and `read_many` for batched reads), carry `labels`,
`class_names` and `image_shape()`, and pickle small (paths, not pixels),
since worker processes get them pickled. Nothing here imports JAX or
TensorFlow, so worker processes start fast.
"""

import functools
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from resnet_jax.data import images
from resnet_jax.data.tfds_source import FOLDER_PREFIX, TfdsSource
from resnet_jax.errors import UserError

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


def _image_files(class_dir: str) -> list[str]:
  """Image files anywhere under class_dir, hidden ones skipped, in sorted path order."""
  extensions = image_extensions()
  found = []
  for folder, subfolders, files in os.walk(class_dir, followlinks=True):
    subfolders[:] = [d for d in subfolders if not _is_hidden(d)]
    found.extend(os.path.join(folder, f) for f in files
                 if not _is_hidden(f) and os.path.splitext(f)[1].lower() in extensions)
  return sorted(found)


def open_split(dataset: str, split: str, data_dir: str = "", manual_dir: str = ""
               ) -> FolderSource | TfdsSource:
  """A random-access source for `split` of `dataset` (`folder:ROOT` or a TFDS name)."""
  if is_folder(dataset):
    return FolderSource(dataset[len(FOLDER_PREFIX):], split)
  return TfdsSource(dataset, split, data_dir, manual_dir)
