"""One row of a stream to one example: the picklable work that worker processes run.

Imports no JAX, TensorFlow or Grain, so that a worker process starts fast.
"""

import numpy as np

from resnet_jax.data import balance
from resnet_jax.data.images import cover_side, min_decode_side, random_resized_crop, resize_center_crop


def _read(source, index: int, max_side: int) -> dict:
  """source[index], decoded reduced where the source supports it (see images.open_image)."""
  read = getattr(source, "read", None)
  return read(index, max_side) if read is not None else source[index]


class _Rows:
  """Equal when made of the same source object with the same parameters, so the same rows.

  A run's worker pool is built with its streams' transforms, and a stream
  made later finds its own among them by equality (workers.Workers.key).
  """

  _caches: tuple[str, ...] = ()  # Attributes that only memoise.

  def _params(self) -> tuple:
    return tuple(sorted((name, value) for name, value in self.__dict__.items()
                        if name != "source" and name not in self._caches))

  def __eq__(self, other) -> bool:
    return (type(other) is type(self) and other.source is self.source
            and other._params() == self._params())

  def __hash__(self) -> int:
    return hash((type(self), id(self.source), self._params()))


class TrainExample(_Rows):
  """Row k of this process's stream to one augmented example; runs in worker processes or threads."""

  _caches = ("_permutation",)

  def __init__(self, source, *, global_batch_size: int, local_batch_size: int,
               process_index: int, image_size: int, train_crop: str,
               crop_scale: tuple[float, float], seed: int, balanced: bool = False):
    self.source = source
    self.num_examples = len(source)
    self.global_batch_size, self.local_batch_size = global_batch_size, local_batch_size
    self.steps_per_epoch = self.num_examples // global_batch_size
    self.process_index, self.image_size = process_index, image_size
    self.train_crop, self.crop_scale, self.seed = train_crop, tuple(crop_scale), seed
    # Classes drawn equally (class_balance=sample): epochs of balance.balanced_epoch.
    self.balanced = balanced
    if train_crop == "pad":
      self.max_side = image_size
    else:  # Even the smallest crop, at the narrowest aspect ratio, keeps full resolution.
      self.max_side = min_decode_side(image_size, self.crop_scale)
    self._permutation = None  # (epoch, permutation), computed once per epoch per worker.

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_permutation": None}

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    cached = self._permutation  # One read: threads may replace it concurrently.
    if cached is None or cached[0] != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      if self.balanced:
        labels = np.asarray(self.source.labels)
        order = balance.balanced_epoch(rng.permutation, labels,
                                       np.bincount(labels, minlength=labels.max() + 1))
      else:
        order = rng.permutation(self.num_examples)
      cached = (epoch, order)
      self._permutation = cached
    return cached[1]

  def map(self, k: int) -> dict:
    step, local_row = divmod(k, self.local_batch_size)
    row = self.process_index * self.local_batch_size + local_row  # Row in the global batch.
    epoch, position = divmod(step, self.steps_per_epoch)
    index = int(self._epoch_permutation(epoch)[position * self.global_batch_size + row])
    example = _read(self.source, index, self.max_side)
    if self.train_crop == "pad":
      image = resize_center_crop(example["image"], self.image_size)
    else:
      rng = np.random.default_rng([self.seed, step, row])
      image = random_resized_crop(example["image"], self.image_size, rng, scale=self.crop_scale)
    return {"image": image, "label": _label(example["label"])}


class EvalExample(_Rows):
  """Row k of this process's eval stream to one example with its mask (zeros past the end)."""

  def __init__(self, source, *, global_batch_size: int, local_batch_size: int,
               process_index: int, image_size: int, crop_fraction: float, channels: int):
    self.source, self.num_examples = source, len(source)
    self.global_batch_size, self.local_batch_size = global_batch_size, local_batch_size
    self.process_index, self.image_size = process_index, image_size
    self.crop_fraction, self.channels = crop_fraction, channels
    # Padding rows' labels take the real rows' shape: [C] zeros for multi-hot labels.
    self.multi_hot_width = (len(source.class_names) if getattr(source, "multi_label", False)
                            else 0)

  def map(self, k: int) -> dict:
    batch, local_row = divmod(k, self.local_batch_size)
    index = (batch * self.global_batch_size + self.process_index * self.local_batch_size
             + local_row)
    if index >= self.num_examples:
      return {"image": np.zeros((self.image_size, self.image_size, self.channels), np.uint8),
              "label": (np.zeros(self.multi_hot_width, np.float32) if self.multi_hot_width
                        else np.int32(0)), "mask": np.float32(0)}
    example = _read(self.source, index,
                    cover_side(self.image_size, self.image_size, self.crop_fraction))
    image = resize_center_crop(example["image"], self.image_size, self.crop_fraction)
    return {"image": image, "label": _label(example["label"]), "mask": np.float32(1)}


def _label(label) -> np.ndarray:
  """A class index as int32, a multi-hot row (a multi-label CSV's) as float32 [C]."""
  label = np.asarray(label)
  return label.astype(np.float32) if label.ndim else np.int32(label)


def make_rows(transform, start: int, size: int) -> list[dict]:
  """Rows start..start+size-1 of `transform`."""
  return [transform.map(k) for k in range(start, start + size)]


def make_batch(transform, start: int, size: int) -> dict:
  """Rows start..start+size-1 of `transform`, stacked into one batch of arrays."""
  rows = make_rows(transform, start, size)
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}
