"""The frozen teacher of a distillation run (config.teacher): read, checked, and shown pictures.

`load` reads the teacher through `restore.load_model` (published names
resolved by `hub.resolve` first) before the data is opened; `place` checks it
against the resolved config (classes, channels) and puts its variables on
every device; `logits`, inside the compiled train step, shows it the
student's augmented batch, re-normalised with the teacher's own statistics
and resized to its own side.
"""

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax.checkpoints import restore
from resnet_jax.errors import UserError
from resnet_jax.interop import convert, hub
from resnet_jax.models import build, resnet
from resnet_jax.sharding import put_replicated


class Teacher(NamedTuple):
  """What the compiled step needs of the teacher besides its variables (passed as an argument)."""
  model: resnet.ResNet
  variables: Any  # {"params", "batch_stats"} replicated on the mesh; never saved, never donated.
  mean: tuple[float, ...]  # Its normalisation, in [0, 1] pixel units.
  std: tuple[float, ...]
  size_HW: tuple[int, int]  # The side it was trained at.


def load(config: ml_collections.ConfigDict, workdir: str) -> restore.LoadedModel:
  """config.teacher's network and weights (EMA where kept), in the student's compute dtype."""
  name = config.teacher
  try:
    path = hub.resolve(name)
    if os.path.abspath(path) == os.path.abspath(workdir):
      raise UserError("it is this run's own workdir: pass the workdir of another, trained run")
    return restore.load_model(path, "distilling from", build.compute_dtype(config))
  except UserError as e:
    raise UserError(f"teacher {name}: {e}") from None


def place(loaded: restore.LoadedModel, config: ml_collections.ConfigDict, mesh) -> Teacher:
  """The teacher checked against the resolved config, its variables replicated on the mesh."""
  check(loaded, config)
  saved = loaded.config
  size_HW = ((saved["image_size"],) * 2 if saved.get("image_size")
             else tuple(int(d) for d in saved["input_shape"][:2]))
  logging.info("distilling from %s (step %d%s; %s, width %d, %dx%d pictures), alpha %g, T %g",
               config.teacher, loaded.step, ", EMA weights" if loaded.weights == "ema" else "",
               saved["model"], saved["width"], *size_HW, config.distill_alpha,
               config.distill_temperature)
  variables = jax.tree.map(lambda x: put_replicated(np.asarray(x), mesh), loaded.variables)
  return Teacher(loaded.model, variables, tuple(saved["mean"]), tuple(saved["std"]), size_HW)


def check(loaded: restore.LoadedModel, config: ml_collections.ConfigDict) -> None:
  """Raises UserError unless the teacher predicts the data's classes from its kind of picture."""
  name, saved = config.teacher, loaded.config
  if saved["num_classes"] != config.num_classes:
    dataset = saved.get("dataset")
    origin = ("converted weights" if dataset == "converted" else
              f"trained on {dataset}" if dataset else "")
    raise UserError(
        f"teacher {name} predicts {saved['num_classes']} classes{f' ({origin})' if origin else ''}"
        f", the data has {config.num_classes}: the student learns the teacher's probabilities "
        "over the same classes, so distil from a teacher trained on this dataset (fine-tune one "
        "with --config.init_checkpoint first)")
  theirs, ours = list(saved.get("class_names") or ()), list(config.get("class_names") or ())
  if theirs and ours and theirs != ours:
    index = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
    raise UserError(f"teacher {name} was trained on other classes (its class {index} is "
                    f"{theirs[index]!r}, the data's is {ours[index]!r}): distil from a teacher "
                    "trained on this dataset's classes, in the same order")
  channels, wanted = convert.input_channels(loaded.variables["params"]), config.input_shape[2]
  if channels != wanted:
    raise UserError(f"teacher {name} takes {channels}-channel pictures, the data has {wanted} "
                    f"channel(s): distil from a teacher trained on {wanted}-channel pictures")
  mean, std = saved.get("mean") or (), saved.get("std") or ()
  if len(mean) != channels or len(std) != channels:
    raise UserError(f"the config saved with teacher {name} has no mean and std for its "
                    f"{channels} channel(s): pass a checkpoint written by this version of "
                    "resnet_jax")
  if not (saved.get("image_size") or len(saved.get("input_shape") or ()) == 3):
    raise UserError(f"the config saved with teacher {name} gives no picture size (image_size "
                    "or input_shape): pass a checkpoint written by this version of resnet_jax")


def pictures(images_BHWC: jax.Array, mean: Sequence[float], std: Sequence[float],
             to_mean: Sequence[float], to_std: Sequence[float],
             size_HW: tuple[int, int]) -> jax.Array:
  """A normalised batch (mean, std) re-normalised with (to_mean, to_std), resized to size_HW.

  Crop, flip, cutout (mean-coloured), mixup and CutMix all commute with the
  per-channel affine normalisation, so undoing the student's gives the
  augmented picture itself in [0, 1] pixel units, which the teacher's then
  normalises. Float32 throughout.
  """
  as_array = lambda values: jnp.asarray(values, jnp.float32)
  pixels = images_BHWC.astype(jnp.float32) * as_array(std) + as_array(mean)
  batch, height, width, channels = pixels.shape
  if (height, width) != tuple(size_HW):
    pixels = jax.image.resize(pixels, (batch, *size_HW, channels), "bilinear")
  return (pixels - as_array(to_mean)) / as_array(to_std)


def logits(teacher: Teacher, variables: Any, images_BHWC: jax.Array, mean: Sequence[float],
           std: Sequence[float]) -> jax.Array:
  """The frozen teacher's float32 logits for the student's normalised batch (eval mode)."""
  inputs = pictures(images_BHWC, mean, std, teacher.mean, teacher.std, teacher.size_HW)
  out = teacher.model.apply(variables, inputs.astype(teacher.model.dtype), train=False)
  return jax.lax.stop_gradient(out.astype(jnp.float32))
