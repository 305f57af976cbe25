r"""Grad-CAM (Selvaraju et al. 2017): where in the picture the evidence for a class lies.

  python -m resnet_jax.predict --workdir=runs/cifar10 --explain=maps/ cat.png photos/

For each picture, the gradient of the top class's logit with respect to the
last stage's output, averaged over space, weighs that output's channels;
their ReLU'd sum, upsampled to the picture, is the heat map (scaled to
[0, 1] per picture). `--explain=DIR` writes it over the picture as
DIR/<name>.png (jet colours, half transparent).
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from resnet_jax.errors import UserError
from resnet_jax.models import resnet

MIN_SIDE = 224  # Small pictures (CIFAR's 32 px) are enlarged so the map can be seen.


def grad_cam(model: resnet.ResNet, variables: Mapping[str, Any], images_BHWC: jax.Array,
             classes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Heat maps [B, H, W] in [0, 1] and the classes [B] they explain (default: the top class).

  Args:
    model, variables: a network of `resnet_jax.create_model` and its weights.
    images_BHWC: normalised float images, as the network sees them.
    classes: one class index per image, or None for each image's top class.
  """
  last = f"layer{len(model.stage_sizes)}_{model.stage_sizes[-1] - 1}"
  weights = {"params": variables["params"], "batch_stats": variables["batch_stats"]}

  def logits_given(delta):
    # Adding a zero `delta` to the last stage's output makes d logit / d delta its gradient.
    captured = {}

    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name == last:
        captured["activations"] = out
        out = out + delta
      return out

    with nn.intercept_methods(add_delta):
      logits = model.apply(weights, images_BHWC, train=False)
    return logits, captured["activations"]

  _, shape = jax.eval_shape(logits_given, jnp.zeros((), jnp.float32))
  logits, pullback, activations = jax.vjp(logits_given, jnp.zeros(shape.shape, shape.dtype),
                                          has_aux=True)
  classes = jnp.argmax(logits, axis=-1) if classes is None else jnp.asarray(classes)
  (gradients,) = pullback(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))
  channel_weights = gradients.mean(axis=(1, 2))  # [B, C]
  cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", activations.astype(jnp.float32),
                               channel_weights.astype(jnp.float32)))
  batch, height, width = images_BHWC.shape[:3]
  cam = jax.image.resize(cam, (batch, height, width), "bilinear")
  cam = cam / jnp.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)
  return cam, classes


def overlay(picture_HWC: np.ndarray, heat_HW: np.ndarray) -> Image.Image:
  """The heat map in jet colours over the picture, half transparent, at least MIN_SIDE px."""
  from matplotlib import colormaps
  rgb = picture_HWC if picture_HWC.shape[-1] == 3 else np.repeat(picture_HWC, 3, axis=-1)
  colours = colormaps["jet"](np.clip(heat_HW, 0, 1))[..., :3] * 255
  blended = (0.5 * rgb.astype(np.float32) + 0.5 * colours).round().astype(np.uint8)
  image = Image.fromarray(blended)
  scale = max(1, -(-MIN_SIDE // min(image.size)))
  return image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)


def explanation_paths(files: Sequence[str], directory: str) -> list[str]:
  """DIR/<name>.png per file; names that repeat (a/x.png, b/x.jpg) get -1, -2, ..."""
  seen: dict[str, int] = {}
  paths = []
  for file in files:
    stem = os.path.splitext(os.path.basename(file))[0]
    count = seen.get(stem, 0)
    seen[stem] = count + 1
    paths.append(os.path.join(directory, f"{stem}-{count}.png" if count else f"{stem}.png"))
  return paths


def check_directory(directory: str) -> None:
  """Creates the output directory; a UserError when it is a file or cannot be made."""
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise UserError(f"--explain={directory} is a file: pass a directory to write heat maps to")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --explain={directory} ({e.strerror or e}): pass another "
                    "directory") from None


def explain_files(predictor: Any, files: Sequence[str], directory: str,
                  batch_size: int = 32) -> list[dict]:
  """Writes one Grad-CAM picture per readable file; returns {file, explanation, class} each.

  `predictor` is `prediction.load_predictor`'s; files that cannot be read are left out (the
  classification already reported them).
  """
  from resnet_jax.evaluation import prediction  # Here: prediction's Predictor builds on this.
  check_directory(directory)
  explain = jax.jit(lambda v, x: grad_cam(predictor.model, v, predictor.normalise(x)))
  written = []
  for start in range(0, len(files), batch_size):
    pictures, readable = [], []
    for file in files[start:start + batch_size]:
      try:
        pictures.append(prediction.read_image(file, predictor.input_shape,
                                                predictor.crop_fraction))
        readable.append(file)
      except UserError:
        continue
    if not pictures:
      continue
    heat, classes = jax.device_get(explain(predictor.variables, np.stack(pictures)))
    for file, picture, heat_HW, index, path in zip(readable, pictures, heat, classes,
                                                   explanation_paths(readable, directory)):
      overlay(picture, heat_HW).save(path)
      written.append({"file": file, "explanation": path,
                      "class": predictor.class_names[int(index)]})
  return written
