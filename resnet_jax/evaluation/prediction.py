r"""Classify images, or folders of them, with a trained or converted checkpoint.

  python -m resnet_jax.predict --workdir=runs/cifar10 cat.png photos/ --top_k=3 \
      --output=preds.csv

A folder stands for every image inside it, recursively and sorted by path;
hidden files and folders and files of other types are skipped. PNG, JPEG and
Pillow's other formats are turned upright by their EXIF orientation, converted
to the training images' channel count and framed exactly as `--mode=eval`
frames them (`data.images.frame`: the shorter side scaled to the training side
over the run's eval crop fraction, the centre kept); `.npy` arrays (HxWxC or
HxW, uint8 0-255 or float in [0, 1]) go the same way. Then the training normalisation and resize apply, as during
evaluation, `--batch_size` images at a time. As in evaluation too, the
checkpoint's EMA weights are used where it has them, and the run's
test-time augmentation (config.eval_tta; `--tta` overrides it) averages
the logits of the views before the softmax.

Large images are decoded reduced, without Pillow's DecompressionBombWarning:
a JPEG at 1/2, 1/4 or 1/8 scale when that still covers the training size;
other formats whole, then reduced by box averages before the resize, with
no full-size copy for gray and RGB images. At most MAX_PIXELS (16384 x 16384
= 268 megapixels; about 3 bytes each for RGB) are decoded per file: a larger
image (counted after JPEG's reduction) is refused with a one-line error
naming it. This limit replaces Pillow's (a warning above 89 megapixels, a
refusal above 179).

A multi-label run (config.multi_label, from a multi-label CSV) gives each
class its own sigmoid probability, and a file's predictions are every class
above the run's multi_label_threshold (`--threshold` overrides it), most
probable first, however many (`--top_k` does not cut them; none is an empty
list).

A file that cannot be read is reported by name and the rest are still
classified; the exit code is then 1. `--output=FILE.json` or `FILE.csv`
also writes the predictions; the CSV has the columns file, class_1,
probability_1, ... up to --top_k, and error (empty for files that were read).
"""

import csv
import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from resnet_jax.data import augment, images
from resnet_jax.checkpoints.restore import load_model
from resnet_jax.config.configuration import TTA_MODES
from resnet_jax.errors import UserError

DEFAULT_BATCH_SIZE = 32  # Images per compiled call; smaller batches pad to a power of two.
MAX_PIXELS = 16384 * 16384  # Decoded per file: 0.8 GB for RGB, 1.9 GB for RGBA and its RGB.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".npy")  # What a folder's files are taken for.
OUTPUT_FORMATS = (".json", ".csv")


@dataclasses.dataclass
class Predictor:
  """A checkpoint's model, bound to its variables and input format."""
  probabilities: Callable[[np.ndarray], np.ndarray]  # uint8 [B, H, W, C] -> [B, classes]
  input_shape: tuple[int, int, int]  # H, W, C of the training images.
  class_names: list[str]
  weights: str = "raw"  # "ema" when the checkpoint's weight EMA is used.
  tta: str = "none"  # Test-time augmentation: config.eval_tta's values.
  crop_fraction: float = 1.0  # Centre crop of each picture, as evaluation frames it.
  # For explanations and features: the network, its weights, uint8 images to its input.
  model: Any = None
  variables: Any = None
  normalise: Callable[[Any], Any] | None = None
  # Multi-label: probabilities are per-class sigmoids, and predictions every class above this.
  multi_label: bool = False
  threshold: float = 0.5


def _required(config: Mapping[str, Any], key: str, path: str) -> Any:
  value = config.get(key)
  if value is None or (isinstance(value, (str, list, tuple)) and not value):
    raise UserError(f"the config saved with {path} has no {key!r}: it was written by an older "
                    "or foreign trainer; retrain or convert again")
  return value


def load_predictor(path: str, tta: str | None = None,
                   threshold: float | None = None) -> Predictor:
  """Loads a checkpoint (workdir, checkpoints/ folder or step folder) for classification.

  Its EMA weights are used where it has them; `tta` (None: the run's
  eval_tta) names the test-time augmentation, as in evaluation; `threshold`
  (None: the run's multi_label_threshold) what a multi-label run lists.
  """
  loaded = load_model(path, action="classifying with", dtype=jnp.float32)
  model, variables, weights, config = loaded.model, loaded.variables, loaded.weights, loaded.config
  tta = tta or config.get("eval_tta") or "none"
  if tta not in TTA_MODES:
    raise UserError(f"unknown test-time augmentation {tta!r}: pass --tta as one of "
                    f"{', '.join(TTA_MODES)}")
  num_classes = config["num_classes"]
  mean = tuple(float(m) for m in _required(config, "mean", path))
  std = tuple(float(s) for s in _required(config, "std", path))
  height, width, channels = (int(d) for d in _required(config, "input_shape", path))
  if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
    raise UserError(f"the config saved with {path} has input_shape "
                    f"{config['input_shape']} with {len(mean)} means and {len(std)} stds: "
                    "predict reads 1- or 3-channel images with one mean and std per channel")
  image_size = int(config.get("image_size") or 0)
  names = list(config.get("class_names") or [])
  if len(names) != num_classes:
    names = [f"class_{i}" for i in range(num_classes)]
  multi_label = bool(config.get("multi_label", False))
  threshold = config.get("multi_label_threshold", 0.5) if threshold is None else threshold
  if not 0 < threshold < 1:
    raise UserError(f"threshold {threshold} is not in (0, 1): pass --threshold=0.5, say")
  activation = jax.nn.sigmoid if multi_label else functools.partial(jax.nn.softmax, axis=-1)

  @jax.jit
  def probabilities(variables, images_BHWC):
    x = augment.preprocess(images_BHWC, mean, std, image_size)
    return activation(augment.tta_logits(lambda v: model.apply(variables, v, train=False), x,
                                         tta))

  return Predictor(lambda batch: np.asarray(probabilities(variables, batch)),
                   (height, width, channels), names, weights, tta,
                   images.eval_crop_fraction(config), model, variables,
                   lambda batch: augment.preprocess(batch, mean, std, image_size),
                   multi_label, float(threshold))


# Reading images --------------------------------------------------------------


def _array_to_uint8(array: np.ndarray, path: str) -> np.ndarray:
  """HxW or HxWxC, uint8 or float in [0, 1], to uint8 HxWxC."""
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise UserError(f"{path}: array of shape {array.shape}; expected HxW or HxWxC with "
                    "1, 3 or 4 channels")
  _check_size(path, array.shape[1], array.shape[0])
  array = np.asarray(array)  # Off the memory map, now that the size is known to be sane.
  if array.dtype == np.uint8:
    return array
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
      raise UserError(f"{path}: float arrays must hold values in [0, 1] "
                      f"(this one spans {array.min():g} to {array.max():g})")
    return np.round(array * 255).astype(np.uint8)
  if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
    return array.astype(np.uint8)
  raise UserError(f"{path}: arrays must be uint8 (0-255) or float in [0, 1], not {array.dtype}")


def _check_size(path: str, width: int, height: int) -> None:
  if width * height > MAX_PIXELS:
    side = math.isqrt(MAX_PIXELS)
    raise UserError(f"{path}: {width}x{height} pixels is more than predict decodes "
                    f"({MAX_PIXELS / 1e6:.3g} megapixels, {side}x{side}): downscale it first")


def _decode_framed(path: str, height: int, width: int, channels: int,
                   crop_fraction: float) -> np.ndarray:
  """Decodes an image or .npy file, no larger than needed, and frames it as evaluation does."""
  if path.lower().endswith(".npy"):
    array = _array_to_uint8(np.load(path, mmap_mode="r", allow_pickle=False), path)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return images.frame(image, height, width, crop_fraction, channels)
  # JPEG only: decoded at 1/2, 1/4 or 1/8 scale where that still covers the crop.
  min_side = images.cover_side(height, width, crop_fraction)
  with images.open_image(path, min_side, lambda w, h: _check_size(path, w, h)) as image:
    return images.frame(image, height, width, crop_fraction, channels)


def read_image(path: str, input_shape: Sequence[int], crop_fraction: float = 1.0) -> np.ndarray:
  """One image or .npy file as uint8 [H, W, C] in the training format, framed as eval frames it.

  EXIF orientation is applied; the shorter side is scaled to
  round(side / crop_fraction) and the centre kept, as `--mode=eval` does.
  """
  height, width, channels = input_shape
  try:
    return _decode_framed(path, height, width, channels, crop_fraction)
  except UserError:
    raise
  except Exception as e:  # Damaged files fail in many ways (OSError, SyntaxError, ...).
    raise UserError(f"{path}: cannot read it as an image ({type(e).__name__}: "
                    f"{_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else "no message"


def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given; each folder as the image files inside it, recursively and sorted."""
  files = []
  for path in paths:
    if not os.path.isdir(path):
      files.append(path)  # Even a .txt: asked for by name, it gets its error line.
      continue
    found = []
    for root, folders, names in os.walk(path):
      folders[:] = [f for f in folders if not f.startswith(".")]  # .git, .ipynb_checkpoints
      found += [os.path.join(root, n) for n in names if not n.startswith(".")
                and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    if not found:
      raise UserError(f"folder {path} holds no image files ({' '.join(IMAGE_EXTENSIONS)}): "
                      "pass another folder, or the files themselves")
    files += sorted(found)
  return files


# Classifying -----------------------------------------------------------------


def _top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict]:
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [{"class": class_names[i], "index": int(i), "probability": float(probabilities[i])}
          for i in order]


def _above(probabilities: np.ndarray, class_names: Sequence[str], threshold: float) -> list[dict]:
  """A multi-label picture's classes: every one above the threshold, most probable first."""
  return _top_k(probabilities, class_names, int(np.sum(probabilities > threshold)))


def classify(predictor: Predictor, files: Sequence[str], top_k: int = 5,
             batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[dict]:
  """One {file, predictions} per file, in order, read and classified batch_size at a time.

  Predictions are the top_k classes, or a multi-label run's classes above its
  threshold. A file that cannot be read gets an `error` (and no predictions)
  instead.
  """
  if batch_size < 1:
    raise UserError(f"batch_size is {batch_size}: pass --batch_size of 1 or more")
  k = max(1, min(top_k, len(predictor.class_names)))
  for start in range(0, len(files), batch_size):
    results: list[dict] = [{"file": f} for f in files[start:start + batch_size]]
    readable, pictures = [], []
    for result in results:
      try:
        pictures.append(read_image(result["file"], predictor.input_shape,
                                   predictor.crop_fraction))
        readable.append(result)
      except UserError as e:
        result.update(error=str(e), predictions=[])
    if pictures:
      batch = np.stack(pictures)
      # Pad to a power of two (or batch_size) so a few shapes cover every file count.
      padded = min(batch_size, 1 << (len(batch) - 1).bit_length())
      batch = np.concatenate([batch, np.zeros((padded - len(batch), *batch.shape[1:]), np.uint8)])
      for result, row in zip(readable, predictor.probabilities(batch)):
        result["predictions"] = (_above(row, predictor.class_names, predictor.threshold)
                                 if predictor.multi_label else
                                 _top_k(row, predictor.class_names, k))
    yield from results


def classify_files(predictor: Predictor, files: Sequence[str], top_k: int = 5,
                   batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict]:
  """`classify`, as a list."""
  return list(classify(predictor, files, top_k, batch_size))


# Paths and output ------------------------------------------------------------


def checkpoint_path(workdir: str | None, checkpoint: str | None) -> str:
  """The checkpoint folder that --workdir or --checkpoint names; a UserError for a file."""
  if workdir and checkpoint:
    raise UserError("pass either --workdir or --checkpoint, not both")
  if not (workdir or checkpoint):
    raise UserError("pass --workdir=DIR (a training or conversion output) or --checkpoint=DIR")
  flag, path = ("workdir", workdir) if workdir else ("checkpoint", checkpoint)
  # restore.resolve_checkpoint lists the path, which fails with a traceback on a file.
  if os.path.isfile(path):
    raise UserError(f"--{flag}={path} is a file, not a folder: pass the workdir that training "
                    "or resnet_jax.convert wrote, or a checkpoint folder inside it")
  return path


def check_output(output: str) -> str:
  """The format (.json or .csv) of an output path that can be written; a UserError if not."""
  path = os.path.abspath(output)
  if os.path.isdir(path) or not os.path.isdir(os.path.dirname(path)):
    why = "is a directory" if os.path.isdir(path) else "is in no existing directory"
    raise UserError(f"--output={output} {why}: pass a file path in an existing directory")
  extension = os.path.splitext(output)[1].lower()
  if extension not in OUTPUT_FORMATS:
    raise UserError(f"--output={output} has the unknown extension {extension or '(none)'!r}: "
                    "name it FILE.json or FILE.csv")
  return extension


def write_results(output: str, results: Sequence[dict]) -> None:
  """Writes JSON (as classify gives them) or CSV (one row per file), by output's extension."""
  extension = check_output(output)
  try:
    with open(output, "w", newline="") as f:
      if extension == ".json":
        json.dump(list(results), f, indent=2)
        return
      k = max((len(r["predictions"]) for r in results), default=0)
      writer = csv.writer(f)
      writer.writerow(["file", *(f"{column}_{i}" for i in range(1, k + 1)
                                 for column in ("class", "probability")), "error"])
      for r in results:
        cells = [[p["class"], p["probability"]] for p in r["predictions"]]
        cells += [["", ""]] * (k - len(cells))
        writer.writerow([r["file"], *(c for pair in cells for c in pair), r.get("error", "")])
  except OSError as e:
    raise UserError(f"cannot write {output} ({e.strerror or e}): pass another --output") from None


def predict(predictor: "Predictor | str", images: np.ndarray) -> np.ndarray:
  """Class probabilities [B, classes] of uint8 images [B, H, W, C] (or one [H, W, C]).

  Args:
    predictor: from `load_predictor`, or a checkpoint path to load one from.
    images: at the training images' height, width and channel count
      (`predictor.input_shape`), pixel values 0-255; files of any size go
      through `classify` instead.
  """
  if isinstance(predictor, str):
    predictor = load_predictor(predictor)
  batch = np.asarray(images)
  single = batch.ndim == 3
  batch = batch[None] if single else batch
  if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(predictor.input_shape):
    raise UserError(f"images of shape {np.shape(images)} do not match the model's input "
                    f"{tuple(predictor.input_shape)}: pass [B, H, W, C] (or [H, W, C]) uint8 "
                    "arrays of that size, or files to `classify`, which resizes them")
  if batch.dtype != np.uint8:
    raise UserError(f"images are {batch.dtype}: pass uint8 pixel values 0-255")
  probabilities = predictor.probabilities(batch)
  return probabilities[0] if single else probabilities
