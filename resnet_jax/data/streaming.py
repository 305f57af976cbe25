"""Grain pipelines that stream a random-access source: one process's share of every global batch.

Training order is a pure function of (seed, step): epoch e is the permutation
`np.random.default_rng([seed, e])` of the whole split (with class_balance
"sample", a class-balanced resampling drawn from that generator:
data/balance.py), the global batch at a step is the next slice of it, and
process p takes rows [p*B/P, (p+1)*B/P) of that batch, the row layout
`jax.make_array_from_process_local_data` expects on a 1-axis mesh over all
devices. So the batches do not depend on the number of workers or processes,
and a resumed run only needs its step (Grain's own iterator checkpoint
depends on the worker count and is not used).

Only the per-example decode and resize run on the host (examples.py), in one
of three backends, each one value naming its own parameters: `Threads` of
this process through Grain (config.data_workers = 0), `Processes` of the
stream's own, started with each pass (workers.py: they import no JAX and
start in well under a second), or a run's `Pool`, built with every stream's
transform and kept across training and evaluation. Crops by padding, flips
and normalisation run on the device.
"""

import dataclasses
import gc
import time
from collections.abc import Iterator

import grain
import numpy as np

from resnet_jax.data import workers as worker_pool
from resnet_jax.data.examples import EvalExample, TrainExample
from resnet_jax.errors import UserError

_TrainExample, _EvalExample = TrainExample, EvalExample  # Their former names.

TRAIN_CROPS = ("pad", "random_resized")


@dataclasses.dataclass(frozen=True)
class Threads:
  """Grain threads of this process, `prefetch` batches in flight."""
  prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class Processes:
  """`count` worker processes of the stream's own, started with each pass and stopped after it."""
  count: int
  prefetch: int = 2  # Batches in flight per process.

  def __post_init__(self):
    if self.count < 1:
      raise ValueError(f"Processes needs at least one process, not {self.count}: use Threads()")


@dataclasses.dataclass(frozen=True)
class Pool:
  """The processes of `workers`, a pool built with this stream's transform; its owner closes it."""
  workers: worker_pool.Workers
  prefetch: int = 2  # Batches in flight per process.


Backend = Threads | Processes | Pool


def backend_for(workers: int, prefetch: int = 2) -> Threads | Processes:
  """The backend of config.data_workers = `workers`: 0 threads, more processes of a stream's own."""
  if workers < 0:
    raise UserError(f"workers is {workers}: set --config.data_workers to 0 (in-process) or more")
  return Processes(workers, prefetch) if workers else Threads(prefetch)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(f"batch size {global_batch_size} does not split evenly over {process_count} "
                    f"processes: set --config.batch_size to a positive multiple of {process_count}")
  return global_batch_size // process_count


def _owned(batch: dict) -> dict:
  """Plain arrays copied out of Grain's shared memory, which is freed when its array dies.

  A batch kept longer (logged, or held at exit) would otherwise pin a shared
  memory block and leave "leaked shared_memory" warnings; the copy costs
  little next to decoding.
  """
  return {k: np.array(v) if type(v) is not np.ndarray else v for k, v in batch.items()}


def _collect() -> None:
  # Grain's closed iterators keep their last shared-memory batches in reference
  # cycles; collecting now unlinks them, rather than leaving "leaked
  # shared_memory" warnings at exit.
  gc.collect()


def _check_pool(transform, chosen: Backend) -> None:
  """Refuses, now rather than at the first batch, a pool that cannot run `transform`."""
  if isinstance(chosen, Pool):
    chosen.workers.key(transform)


def _iterate(transform, batch_size: int, first_batch: int, num_batches: int, chosen: Backend):
  """Batches first_batch.. of `transform`, made where `chosen` says."""
  prefetch = max(1, chosen.prefetch)
  sizes = dict(batch_size=batch_size, first_batch=first_batch, num_batches=num_batches,
               prefetch=prefetch)
  if isinstance(chosen, Pool):
    return chosen.workers.batches(transform, **sizes)
  if isinstance(chosen, Processes):
    return worker_pool.own_batches(transform, workers=chosen.count, **sizes)
  # Threads compute whole batches; Pillow's decode and resize release the GIL.
  rows = grain.MapDataset.range(first_batch * batch_size, (first_batch + num_batches) * batch_size)
  dataset = rows.map(transform.map).batch(batch_size, drop_remainder=True)
  return iter(dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)))


def train_rows(source, *, global_batch_size: int, image_size: int, train_crop: str,
               crop_scale: tuple[float, float], seed: int, process_index: int = 0,
               process_count: int = 1, class_balance: str = "none") -> TrainExample:
  """This process's rows of the training stream: what a `Pool` must be built with to run it.

  With class_balance "sample" each epoch is a class-balanced resampling of the
  source (data/balance.py), drawn from (seed, epoch) and the source's labels.
  """
  if train_crop not in TRAIN_CROPS:
    raise UserError(f"train_crop {train_crop!r} is not known: set --config.train_crop to one "
                    f"of {', '.join(TRAIN_CROPS)}")
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise UserError(f"crop_scale {tuple(crop_scale)} is not a range inside (0, 1]: set "
                    "--config.crop_scale to (low, high) with 0 < low <= high <= 1, "
                    "e.g. (0.08, 1.0)")
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  if len(source) // global_batch_size == 0:
    raise UserError(f"the training split has {len(source)} examples, fewer than one batch of "
                    f"{global_batch_size}: lower --config.batch_size or add examples")
  return TrainExample(
      source, global_batch_size=global_batch_size, local_batch_size=local_batch_size,
      process_index=process_index, image_size=image_size, train_crop=train_crop,
      crop_scale=crop_scale, seed=seed, balanced=class_balance == "sample")


class TrainStream:
  """This process's rows of the training batches for steps start_step..num_steps-1, uint8.

  `wait_seconds` is the total time `next` blocked, starting the workers included.
  With a `Pool` backend the pool outlives the stream; `Processes` stop with it.
  """

  def __init__(self, source, *, global_batch_size: int, image_size: int, train_crop: str,
               crop_scale: tuple[float, float], seed: int, start_step: int, num_steps: int,
               process_index: int = 0, process_count: int = 1,
               backend: Backend = Threads(), class_balance: str = "none"):
    transform = train_rows(source, global_batch_size=global_batch_size, image_size=image_size,
                           train_crop=train_crop, crop_scale=crop_scale, seed=seed,
                           process_index=process_index, process_count=process_count,
                           class_balance=class_balance)
    _check_pool(transform, backend)
    self.local_batch_size = transform.local_batch_size
    self.steps_per_epoch = transform.steps_per_epoch
    self._transform, self._num_batches = transform, max(0, num_steps - start_step)
    self._backend = backend
    self._iterator = None
    self._closed = False
    self.step = start_step  # The step of the next batch.
    self.wait_seconds = 0.0

  def __iter__(self) -> "TrainStream":
    return self

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    start = time.perf_counter()
    try:
      if self._iterator is None:
        self._iterator = _iterate(self._transform, self.local_batch_size, self.step,
                                  self._num_batches, self._backend)
      batch = _owned(next(self._iterator))
    except StopIteration:
      raise
    except Exception:
      self.close()  # Stop the other workers now, not at exit.
      raise
    finally:
      self.wait_seconds += time.perf_counter() - start
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops the workers and frees their shared memory; idempotent."""
    self._closed = True
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None
      _collect()

  def __enter__(self) -> "TrainStream":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Global eval batches that hold every example once, the last one padded."""
  return -(-num_examples // global_batch_size)


def _channels(source) -> int:
  channels = getattr(source, "channels", None)
  return int(channels) if channels else int(np.asarray(source[0]["image"]).shape[-1])


def eval_rows(source, *, global_batch_size: int, image_size: int, crop_fraction: float,
              process_index: int = 0, process_count: int = 1) -> EvalExample:
  """This process's rows of the eval stream: what a `Pool` must be built with to run it."""
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  if not 0 < crop_fraction <= 1:
    raise UserError(f"crop_fraction {crop_fraction} is not in (0, 1]: set "
                    "--config.eval_crop_fraction to e.g. 0.875 (or 1.0 for no crop)")
  return EvalExample(
      source, global_batch_size=global_batch_size, local_batch_size=local_batch_size,
      process_index=process_index, image_size=image_size, crop_fraction=crop_fraction,
      channels=_channels(source))


class EvalStream:
  """This process's rows of every eval batch, one whole pass per call: image, label and mask.

  Every process yields num_eval_batches(len(source), global_batch_size)
  batches, so collective steps stay in lockstep; over all processes each
  example appears exactly once with mask 1 (0 on padding rows). With a
  `Pool` backend (e.g. the training stream's), every pass runs on those same
  workers; with `Processes`, each pass starts its own.
  """

  def __init__(self, source, *, global_batch_size: int, image_size: int, crop_fraction: float,
               process_index: int = 0, process_count: int = 1, backend: Backend = Threads()):
    self._transform = eval_rows(source, global_batch_size=global_batch_size,
                                image_size=image_size, crop_fraction=crop_fraction,
                                process_index=process_index, process_count=process_count)
    _check_pool(self._transform, backend)
    self.local_batch_size = self._transform.local_batch_size
    self.num_batches = num_eval_batches(len(source), global_batch_size)
    self._backend = backend

  def __call__(self) -> Iterator[dict]:
    iterator = _iterate(self._transform, self.local_batch_size, 0, self.num_batches,
                        self._backend)
    try:
      for batch in iterator:
        yield _owned(batch)
    finally:
      iterator.close()
      del iterator
      _collect()


def eval_batches(source, **kwargs) -> Iterator[dict]:
  """One pass of `EvalStream(source, **kwargs)`; bad arguments raise now, not at the first next."""
  return EvalStream(source, **kwargs)()
