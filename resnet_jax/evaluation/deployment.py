"""A checkpoint made deployable, and what a deployed file is measured with.

`logits_function`: framed uint8 pictures to logits in one JAX function, the
run's normalisation and resize inside (`augment.preprocess`, then the
network; no test-time augmentation), which every export format serializes.
`contract`: what a caller does to a picture before it, and what comes out,
written as JSON beside each exported file. `calibration_pictures`: training
pictures framed as evaluation frames them, for int8 calibration.
`evaluate_logits`: any such function (an exported file run by its runtime)
over the run's eval split, summed by `eval_steps.eval_step` itself so the
metrics are those of `--mode=eval`.
"""

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.data import augment, images, memory, pipeline
from resnet_jax.errors import UserError
from resnet_jax.evaluation import eval_steps

EVAL_CHUNK = 1024  # Pictures decoded at a time from a streamed eval split.


def _required(config: Mapping[str, Any], key: str) -> Any:
  value = config.get(key)
  if value is None or (isinstance(value, (str, list, tuple)) and not value):
    raise UserError(f"the checkpoint's config has no {key!r}, which the exported file's "
                    "contract needs: export a checkpoint written by this version's training or "
                    "python -m resnet_jax.convert")
  return value


def logits_function(model: Any, variables: Any, config: Mapping[str, Any]) -> Callable:
  """uint8 [B, H, W, C] framed pictures -> float32 logits [B, classes], weights inside."""
  mean = tuple(float(m) for m in _required(config, "mean"))
  std = tuple(float(s) for s in _required(config, "std"))
  image_size = int(config.get("image_size") or 0)

  def logits(images_BHWC: jax.Array) -> jax.Array:
    x = augment.preprocess(images_BHWC, mean, std, image_size)
    return model.apply(variables, x, train=False).astype(jnp.float32)

  return logits


def contract(config: Mapping[str, Any], step: int, weights: str) -> dict:
  """Everything a caller does to a picture, what the file does itself, and what comes out."""
  height, width, channels = (int(d) for d in _required(config, "input_shape"))
  mean = [float(m) for m in _required(config, "mean")]
  std = [float(s) for s in _required(config, "std")]
  crop = images.eval_crop_fraction(config)
  image_size = int(config.get("image_size") or 0)
  resize_to = image_size if image_size and image_size != height else None  # As preprocess.
  side = resize_to or height
  cover_h, cover_w = round(height / crop), round(width / crop)
  names = list(config.get("class_names") or [])
  num_classes = int(config["num_classes"])
  if len(names) != num_classes:
    names = [f"class_{i}" for i in range(num_classes)]
  colour = "RGB (alpha dropped)" if channels == 3 else "grey: one channel (Pillow's 'L')"
  return {
      "input": {"name": "images", "shape": [None, height, width, channels], "dtype": "uint8",
                "layout": "NHWC", "channels": "RGB" if channels == 3 else "grey",
                "values": "pixel values 0-255"},
      "framing": {
          "height": height, "width": width, "crop_fraction": crop,
          "cover": [cover_h, cover_w],
          "steps": [
              f"decode, apply the EXIF orientation, convert to {colour}",
              f"resize, keeping the aspect ratio, so the picture covers {cover_h}x{cover_w} "
              f"(round(side / crop_fraction)): the limiting side becomes exactly that, the other "
              "int(limiting * other / limiting_original), truncated; bilinear with antialiasing "
              "(Pillow's Image.resize(size, Image.BILINEAR), as torchvision's Resize)",
              f"keep the centre {height}x{width}: top = round((new_height - {height}) / 2), "
              f"left = round((new_width - {width}) / 2)",
              "stack as uint8 [batch, height, width, channels]; the model does the rest"]},
      "in_the_model": {
          "steps": ["x = float32(images) / 255"]
          + ([f"bilinear resize to {side}x{side} (jax.image.resize: half-pixel centres, "
              "antialiased when shrinking)"] if resize_to else [])
          + ["x = (x - mean) / std, per channel", "the network, over NHWC float32"],
          "mean": mean, "std": std, "mean_std_scale": "0-1 (after x / 255)",
          "resize_to": resize_to, "network_input": [None, side, side, channels]},
      "output": {"name": "logits", "shape": [None, num_classes], "dtype": "float32",
                 "meaning": "logits in class_names order: softmax over the last axis gives the "
                            "probabilities resnet_jax.predict prints (without test-time "
                            "augmentation)"},
      "class_names": names,
      "source": {"model": config.get("model"), "stem": config.get("stem"),
                 "width": config.get("width"), "num_classes": num_classes,
                 "dataset": config.get("dataset"), "step": int(step), "weights": weights},
  }


def calibration_pictures(config: ml_collections.ConfigDict, count: int,
                         seed: int = 0) -> np.ndarray:
  """`count` training pictures (a fixed random sample), framed as evaluation frames them."""
  if count < 1:
    raise UserError(f"--calibration_images={count}: pass 1 or more (256 is the default)")
  if config.get("dataset") in (None, "", "converted"):
    raise UserError("int8 calibration reads the run's training pictures, and this checkpoint "
                    "names no dataset (converted weights): quantize a run trained or "
                    "fine-tuned on your data")
  source = pipeline.open_source(config, config.train_split)
  chosen = np.random.default_rng(seed).choice(len(source), min(count, len(source)),
                                              replace=False)
  split = memory.decode_source(source, tuple(config.input_shape[:2]),
                               images.eval_crop_fraction(config), indices=np.sort(chosen))
  return split.images


class _Logits(NamedTuple):
  """A stand-in TrainState whose network is the identity: eval_step sums given logits."""
  params: Any = None
  batch_stats: Any = None
  apply_fn: Callable = lambda variables, x, train: x


def _eval_batches(config: ml_collections.ConfigDict,
                  batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(uint8 pictures, labels) of the eval split, framed as `--mode=eval` frames them."""
  split = pipeline.open_eval_split(config)
  if isinstance(split, memory.Split):
    for start in range(0, len(split.labels), batch_size):
      yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
    return
  fraction = images.eval_crop_fraction(config)
  for start in range(0, len(split), EVAL_CHUNK):
    chunk = memory.decode_source(split, tuple(config.input_shape[:2]), fraction,
                                 indices=np.arange(start, min(start + EVAL_CHUNK, len(split))))
    for at in range(0, len(chunk.labels), batch_size):
      yield chunk.images[at:at + batch_size], chunk.labels[at:at + batch_size]


def evaluate_logits(config: ml_collections.ConfigDict,
                    logits_of: Callable[[np.ndarray], np.ndarray],
                    batch_size: int = 256) -> dict[str, Any]:
  """eval_steps' summed metrics of `logits_of` over the run's eval split, every example once.

  A multi-label run's per-example scores are gathered batch by batch, as
  `--mode=eval` gathers them, for `evaluator.summarize` to rank on the host.
  """
  num_classes = int(config.num_classes)
  multi_label = bool(config.get("multi_label", False))
  if multi_label:
    add = jax.jit(lambda totals, batch: eval_steps.add_batch(
        totals, eval_steps.multi_label_eval_step(_Logits(), batch)))
    rows = []  # Each batch's totals: its sums and its rows.
  else:
    add = jax.jit(lambda totals, batch: jax.tree.map(
        jnp.add, totals, eval_steps.eval_step(_Logits(), batch, num_classes)))
    totals = eval_steps.zero_eval_totals(num_classes)
  for pictures, labels in _eval_batches(config, batch_size):
    logits = np.asarray(logits_of(pictures), np.float32)
    if logits.shape != (len(labels), num_classes):
      raise UserError(f"the exported model gave logits of shape {logits.shape} for "
                      f"{len(labels)} pictures; the run has {num_classes} classes: evaluate it "
                      "on the run it was exported from")
    pad = batch_size - len(labels)  # One compiled shape: the last batch padded and masked.
    batch = {
        "image": np.concatenate([logits, np.zeros((pad, num_classes), np.float32)]),
        "label": np.concatenate([labels, np.zeros((pad, *labels.shape[1:]), labels.dtype)]),
        "mask": np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])}
    if multi_label:
      rows.append(jax.device_get(add(eval_steps.zero_eval_totals(num_classes, batch_size),
                                     batch)))
    else:
      totals = add(totals, {**batch, "label": batch["label"].astype(np.int32)})
  if multi_label:
    return {"loss_sum": sum(r["loss_sum"] for r in rows), "count": sum(r["count"] for r in rows),
            **{name: np.concatenate([r[name] for r in rows]) if rows else np.zeros((0,))
               for name in ("scores", "labels", "mask")}}
  return jax.device_get(totals)
