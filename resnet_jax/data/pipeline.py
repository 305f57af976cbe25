"""What a run reads: a dataset held in device memory or streamed from disk.

`open_training_data` decides the input pipeline (config.input_pipeline:
memory, stream, or auto), loads what the config names (a TFDS dataset or a
`folder:ROOT` of images) and says what the data decided (classes,
normalisation, image shape), which `configuration.resolve` writes into the
config once. The trainer then asks a `TrainInput` for each step's input and
hands an `EvalInput` to the evaluator.

The auto rule: memory when the decoded train and eval splits take at most a
quarter of the smallest device's memory (on CPU, of the host's RAM shared by
its devices, since each device holds a copy) and the training images share
one size; stream otherwise.
"""

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from resnet_jax.data import balance, images, memory, sources, streaming
from resnet_jax.data import workers as worker_pool
from resnet_jax.errors import UserError
from resnet_jax import sharding

MEMORY_FRACTION = 0.25
STATS_SAMPLE = 1024  # Images that estimate a streamed dataset's normalisation.


@dataclasses.dataclass
class TrainingData:
  """The loaded data and the facts `configuration.resolve` takes from it."""
  facts: dict[str, Any]
  arrays: memory.Dataset | None = None  # Both splits, when held in memory.
  train_source: Any = None  # Random-access sources, when streamed.
  eval_source: Any = None


def device_memory_budget() -> tuple[int, str]:
  """Bytes a dataset held on every device may take, and what they are a quarter of."""
  devices = jax.local_devices()
  limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
  if all(limits):
    return int(min(limits) * MEMORY_FRACTION), f"a quarter of {min(limits) / 2**30:.1f} GiB per device"
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  share = ram // len(devices)
  return int(share * MEMORY_FRACTION), (f"a quarter of {ram / 2**30:.1f} GiB of RAM over "
                                        f"{len(devices)} device(s)")


def _gib(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GiB"


def choose_pipeline(config: ml_collections.ConfigDict, shape: tuple[int, ...] | None,
                    num_examples: int) -> str:
  """"memory" or "stream", from config.input_pipeline and the data; logs the reason."""
  requested = config.input_pipeline
  budget, budget_text = device_memory_budget()
  needed = num_examples * int(np.prod(shape)) if shape else None
  if requested == "memory":
    if config.train_crop == "random_resized":
      raise UserError("train_crop='random_resized' needs the stream pipeline: set "
                      "--config.input_pipeline=stream (or auto)")
    if shape is None and not config.image_size:
      raise UserError(f"the images of {config.dataset} differ in size: set --config.image_size "
                      "to hold them in memory at one size, or --config.input_pipeline=stream")
    if shape is None:  # Resized to image_size as they load; folders decode to RGB.
      needed = num_examples * config.image_size**2 * 3
    if needed > budget:
      raise UserError(f"{config.dataset} needs {_gib(needed)} decoded in memory, more than "
                      f"{_gib(budget)} ({budget_text}): set --config.input_pipeline=stream")
    logging.info("input pipeline: memory (requested; %s decoded)", _gib(needed))
    return "memory"
  if requested == "stream":
    logging.info("input pipeline: stream (requested)")
    return "stream"
  if config.train_crop == "random_resized":
    reason = "train_crop='random_resized' crops on the host"
  elif shape is None:
    reason = "its images differ in size"
  elif needed > budget:
    reason = f"it needs {_gib(needed)} decoded, more than {_gib(budget)} ({budget_text})"
  else:
    logging.info("input pipeline: memory (%s decoded fits in %s, %s)", _gib(needed),
                 _gib(budget), budget_text)
    return "memory"
  logging.info("input pipeline: stream (%s)", reason)
  return "stream"


def _train_size(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...] | None, int]:
  """The train split's image shape (None if it varies) and example count, without decoding it."""
  cached = memory.cached_shape(config.dataset, config.train_split, config.data_dir)
  if cached is not None:
    return cached
  source = open_source(config, config.train_split)
  return source.image_shape(), len(source)


def open_source(config: ml_collections.ConfigDict, split: str):
  """The random-access source of one split of config.dataset (a TFDS dataset prepared first).

  With config.eval_split a holdout (`holdout:0.1`), config.train_split opens
  as the pictures it leaves for training.
  """
  return sources.open_split(config.dataset, split, config.data_dir, config.manual_dir,
                            sources.SourceOptions.of(config))


def open_training_data(config: ml_collections.ConfigDict) -> TrainingData:
  """Loads the train and eval splits the way config.input_pipeline (or the auto rule) says."""
  sources.check_splits(config.dataset, sources.SourceOptions.of(config))  # Before any reading.
  shape, num_examples = _train_size(config)
  if choose_pipeline(config, shape, num_examples) == "memory":
    dataset = memory.load_dataset(config)
    facts = _facts("memory", dataset.num_classes, dataset.class_names, dataset.mean, dataset.std,
                   dataset.train.images.shape[1:], len(dataset.train.labels))
    return TrainingData(facts={**facts, **_label_facts(dataset.train.labels, facts)},
                        arrays=dataset)
  train_source = open_source(config, config.train_split)
  eval_source = open_source(config, config.eval_split)
  if eval_source.class_names != train_source.class_names:
    raise UserError(f"the class folders of {config.eval_split!r} ({len(eval_source.class_names)}) "
                    f"differ from those of {config.train_split!r} "
                    f"({len(train_source.class_names)}): give both splits the same classes")
  size = stream_image_size(config, train_source.image_shape())
  input_shape = (size, size, train_source.channels)
  mean, std = (config.mean, config.std) if config.mean else estimate_stats(train_source, size)
  memory.check_normalisation(config, mean, std, train_source.channels)
  facts = _facts("stream", config.num_classes or train_source.num_classes,
                 train_source.class_names, mean, std, input_shape, len(train_source))
  # A TFDS source reads its labels from disk: only when the class balance needs them.
  if isinstance(train_source, sources.ImageFileSource) or config.class_balance != "none":
    facts.update(_label_facts(train_source.labels, facts))
  return TrainingData(facts=facts, train_source=train_source, eval_source=eval_source)


def _facts(mode, num_classes, class_names, mean, std, input_shape, num_examples) -> dict:
  return {"input_pipeline": mode, "num_classes": num_classes, "class_names": class_names,
          "mean": mean, "std": std, "input_shape": input_shape,
          "num_train_examples": num_examples}


def _label_facts(labels: np.ndarray, facts: dict) -> dict:
  """Whether labels are multi-hot, and the training examples (or positives) of each class."""
  return {"multi_label": np.ndim(labels) == 2,
          "train_class_counts": balance.class_counts(labels, facts["num_classes"])}


def stream_image_size(config: ml_collections.ConfigDict, shape: tuple[int, ...] | None) -> int:
  """The side every streamed image is resized and cropped to."""
  if config.image_size:
    return config.image_size
  if shape is not None and shape[0] == shape[1]:
    return shape[0]
  raise UserError(f"the images of {config.dataset} " + ("differ in size" if shape is None else
                  f"are {shape[0]}x{shape[1]}, not square") + ": set --config.image_size to the "
                  "side the model should see, e.g. 224")


def estimate_stats(source, size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std from a fixed random sample of the training images."""
  count = min(len(source), STATS_SAMPLE)
  indices = np.sort(np.random.default_rng(0).choice(len(source), count, replace=False))
  sample = memory.decode_source(source, size, indices=indices)
  logging.info("normalisation estimated from %d training images (set config.mean and "
               "config.std to fix it)", count)
  return memory.channel_stats(sample.images)


def eval_pipeline(config: ml_collections.ConfigDict) -> str:
  """How an eval run reads its split: the run's pipeline, or the auto rule for the eval split."""
  if config.get("input_pipeline") in ("memory", "stream"):
    return config.input_pipeline
  source = open_source(config, config.eval_split)
  return choose_pipeline(config, source.image_shape(), len(source))


def open_eval_split(config: ml_collections.ConfigDict) -> "memory.Split | Any":
  """The eval split of a resolved config: arrays (memory runs) or a source (streamed runs).

  Both frame each picture as `images.frame` does, at config.input_shape and
  the eval crop fraction.
  """
  if eval_pipeline(config) == "stream":
    return open_source(config, config.eval_split)
  split, _ = memory.load_eval_split(config, tuple(config.input_shape[:2]))
  return split


# Per-step input ---------------------------------------------------------------


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """One global batch from this process's rows of it, split over the mesh's devices."""
  batch_sharding = sharding.batch_sharded(mesh)
  return {name: jax.make_array_from_process_local_data(batch_sharding, array)
          for name, array in local.items()}


class MemoryTrainInput:
  """The whole training split on every device; the compiled step draws each batch from it."""

  waits_on_host = False

  def __init__(self, split: memory.Split, mesh: Mesh):
    self.data = {"image": sharding.put_replicated(split.images, mesh),
                 "label": sharding.put_replicated(split.labels, mesh)}

  def start(self, step: int) -> None:
    del step

  def next(self) -> dict[str, jax.Array]:
    return self.data

  def close(self) -> None:
    pass


def _train_rows_args(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What this process's training rows are made of, besides the source."""
  return dict(global_batch_size=config.batch_size, image_size=config.input_shape[0],
              train_crop=config.train_crop, crop_scale=tuple(config.crop_scale), seed=config.seed,
              process_index=jax.process_index(), process_count=jax.process_count(),
              class_balance=config.get("class_balance", "none"))


def _eval_rows_args(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What this process's eval rows are made of, besides the source."""
  return dict(global_batch_size=config.eval_batch_size, image_size=config.input_shape[0],
              crop_fraction=images.eval_crop_fraction(config),
              process_index=jax.process_index(), process_count=jax.process_count())


class StreamTrainInput:
  """Batches decoded on each host, from the resumed step on.

  With config.data_workers > 0, `workers` is the run's one pool of worker
  processes, built here with the training rows and those of `eval_source`:
  `StreamEvalInput(..., pool=workers)` runs every evaluation on it. It
  starts with the first batch, of either, and stops at `close`.
  """

  waits_on_host = True

  def __init__(self, config: ml_collections.ConfigDict, source, mesh: Mesh, num_steps: int, *,
               eval_source):
    self.config, self.source, self.mesh, self.num_steps = config, source, mesh, num_steps
    self.stream = None
    chosen, self.workers = streaming.backend_for(config.data_workers), None
    if isinstance(chosen, streaming.Processes):  # One pool for the run, not one per pass.
      self.workers = worker_pool.Workers(chosen.count, [
          streaming.train_rows(source, **_train_rows_args(config)),
          streaming.eval_rows(eval_source, **_eval_rows_args(config))])
      chosen = streaming.Pool(self.workers, chosen.prefetch)
    self.backend = chosen

  def start(self, step: int) -> None:
    """Positions the stream at `step` (once): the data order is a function of seed and step alone."""
    self.stream = streaming.TrainStream(self.source, **_train_rows_args(self.config),
                                        start_step=step, num_steps=self.num_steps,
                                        backend=self.backend)

  @property
  def wait_seconds(self) -> float:
    return self.stream.wait_seconds if self.stream is not None else 0.0

  def next(self) -> dict[str, jax.Array]:
    return global_batch(next(self.stream), self.mesh)

  def close(self) -> None:
    if self.stream is not None:
      self.stream.close()
    if self.workers is not None:
      self.workers.close()


class StreamEvalInput:
  """The eval split as padded, masked global batches, the same count on every process.

  Each call is one pass. With `pool` (a training run's `StreamTrainInput.workers`,
  built with this split's rows), every pass runs on it; otherwise each pass
  reads as config.data_workers says, with processes of its own.
  """

  def __init__(self, config: ml_collections.ConfigDict, source, mesh: Mesh,
               pool: worker_pool.Workers | None = None):
    self.mesh = mesh
    backend = (streaming.Pool(pool) if pool is not None
               else streaming.backend_for(config.data_workers))
    self.stream = streaming.EvalStream(source, **_eval_rows_args(config), backend=backend)

  def __call__(self) -> Iterator[dict[str, jax.Array]]:
    for local in self.stream():
      yield global_batch(local, self.mesh)
