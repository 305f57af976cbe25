r"""Classify image files with a trained or converted checkpoint.

  python -m resnet_jax.predict --workdir=runs/cifar10 cat.png dog.jpg --top_k=3 \
      --output=preds.json

PNG and JPEG files of any size are converted to the training images'
channel count, scaled so their shorter side fits and center-cropped to the
training height and width; `.npy` arrays (HxWxC or HxW, uint8 0-255 or
float in [0, 1]) go the same way. Then the training normalisation and
resize apply, as during evaluation. A file that cannot be read is reported
by name and the rest are still classified; the exit code is then 1.
"""

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from resnet_jax import input_pipeline, models
from resnet_jax.checkpointing import load_variables
from resnet_jax.errors import UserError

MAX_BATCH = 32  # Images per compiled call; smaller batches pad to a power of two.


@dataclasses.dataclass
class Predictor:
  """A checkpoint's model, bound to its variables and input format."""
  probabilities: Callable[[np.ndarray], np.ndarray]  # uint8 [B, H, W, C] -> [B, classes]
  input_shape: tuple[int, int, int]  # H, W, C of the training images.
  class_names: list[str]


def _required(config: Mapping[str, Any], key: str, path: str) -> Any:
  value = config.get(key)
  if value is None or (isinstance(value, (str, list, tuple)) and not value):
    raise UserError(f"the config saved with {path} has no {key!r}: it was written by an older "
                    "or foreign trainer; retrain or convert again")
  return value


def load_predictor(path: str) -> Predictor:
  """Loads a checkpoint (workdir, checkpoints/ folder or step folder) for classification."""
  variables, config, _ = load_variables(path)
  params = variables["params"]
  num_classes = int(config.get("num_classes") or np.shape(params["fc"]["bias"])[0])
  base_width = int(config.get("width") or np.shape(params["conv1"]["kernel"])[-1])
  try:
    model = models.create_model(_required(config, "model", path), num_classes,
                                _required(config, "stem", path), base_width)
  except ValueError as e:
    raise UserError(f"the config saved with {path} names no known model ({e})") from None
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

  @jax.jit
  def probabilities(variables, images_BHWC):
    x = input_pipeline.preprocess(images_BHWC, mean, std, image_size)
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)

  return Predictor(lambda images: np.asarray(probabilities(variables, images)),
                   (height, width, channels), names)


# Reading images --------------------------------------------------------------


def _fit(image: Image.Image, height: int, width: int) -> Image.Image:
  """Scales so the image covers height x width, then crops the center."""
  scale = max(height / image.height, width / image.width)
  size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
  if size != image.size:
    image = image.resize(size, Image.Resampling.BILINEAR)
  left, top = (size[0] - width) // 2, (size[1] - height) // 2
  return image.crop((left, top, left + width, top + height))


def _array_to_uint8(array: np.ndarray, path: str) -> np.ndarray:
  """HxW or HxWxC, uint8 or float in [0, 1], to uint8 HxWxC."""
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise UserError(f"{path}: array of shape {array.shape}; expected HxW or HxWxC with "
                    "1, 3 or 4 channels")
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


def _open(path: str) -> Image.Image:
  if path.lower().endswith(".npy"):
    array = _array_to_uint8(np.load(path, allow_pickle=False), path)
    if array.shape[-1] == 1:
      return Image.fromarray(array[..., 0], "L")
    return Image.fromarray(array, "RGB" if array.shape[-1] == 3 else "RGBA")
  with Image.open(path) as image:
    image.load()  # Decode now: a truncated file fails here, inside the caller's try.
    return image.copy()


def read_image(path: str, input_shape: Sequence[int]) -> np.ndarray:
  """One image or .npy file as uint8 [H, W, C] in the training format."""
  height, width, channels = input_shape
  try:
    image = _open(path)
    image = _fit(image.convert("L" if channels == 1 else "RGB"), height, width)
  except UserError:
    raise
  except Exception as e:  # Damaged files fail in many ways (OSError, SyntaxError, ...).
    text = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
    raise UserError(f"{path}: cannot read it as an image ({type(e).__name__}: {text})") from None
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


# Classifying -----------------------------------------------------------------


def _top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[dict]:
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [{"class": class_names[i], "index": int(i), "probability": float(probabilities[i])}
          for i in order]


def classify_files(predictor: Predictor, files: Sequence[str], top_k: int = 5) -> list[dict]:
  """One {file, predictions} per file, in order; unreadable files get an `error` instead."""
  results: list[dict] = [{"file": f} for f in files]
  readable, images = [], []
  for result in results:
    try:
      images.append(read_image(result["file"], predictor.input_shape))
      readable.append(result)
    except UserError as e:
      result.update(error=str(e), predictions=[])
  k = max(1, min(top_k, len(predictor.class_names)))
  for start in range(0, len(images), MAX_BATCH):
    batch = np.stack(images[start:start + MAX_BATCH])
    # Pad to a power of two so a few shapes cover every file count.
    padded = 1 << (len(batch) - 1).bit_length()
    batch = np.concatenate([batch, np.zeros((padded - len(batch), *batch.shape[1:]), np.uint8)])
    probabilities = predictor.probabilities(batch)
    for result, row in zip(readable[start:start + MAX_BATCH], probabilities):
      result["predictions"] = _top_k(row, predictor.class_names, k)
  return results


def _checkpoint_path(workdir: str | None, checkpoint: str | None) -> str:
  if workdir and checkpoint:
    raise UserError("pass either --workdir or --checkpoint, not both")
  if not (workdir or checkpoint):
    raise UserError("pass --workdir=DIR (a training or conversion output) or --checkpoint=DIR")
  return workdir or checkpoint


def _print_results(results: list[dict]) -> None:
  for result in results:
    if "error" in result:
      print(f"error: {result['error']}", file=sys.stderr)
      continue
    print(result["file"])
    for p in result["predictions"]:
      print(f"  {p['probability']:.4f}  {p['class']}")
  sys.stdout.flush()


def _write_json(path: str, results: list[dict]) -> None:
  try:
    with open(path, "w") as f:
      json.dump(results, f, indent=2)
  except OSError as e:
    raise UserError(f"cannot write {path} ({e.strerror}): pass another --output") from None


# Command line ----------------------------------------------------------------


def _define_flags() -> None:
  """Defined only when run as a program, so importing this module adds no flags."""
  from absl import flags
  flags.DEFINE_string("workdir", None, "Training (or conversion) workdir to load the best "
                      "checkpoint of.")
  flags.DEFINE_string("checkpoint", None, "A checkpoints/ folder or one step's folder.")
  flags.DEFINE_integer("top_k", 5, "Classes to show per file.", lower_bound=1)
  flags.DEFINE_string("output", None, "Also write the predictions to this JSON file.")


def main(argv: Sequence[str]) -> None:
  from absl import flags, logging
  FLAGS = flags.FLAGS
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs each save step at INFO.
  files = list(argv[1:])
  try:
    if not files:
      raise UserError("pass image files to classify: python -m resnet_jax.predict "
                      "--workdir=DIR IMAGE...")
    predictor = load_predictor(_checkpoint_path(FLAGS.workdir, FLAGS.checkpoint))
    results = classify_files(predictor, files, FLAGS.top_k)
    _print_results(results)
    if FLAGS.output:
      _write_json(FLAGS.output, results)
      print(f"wrote {os.path.abspath(FLAGS.output)}")
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  sys.exit(1 if any("error" in r for r in results) else 0)


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
