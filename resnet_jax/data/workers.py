"""Worker processes that make whole batches, returned in order: the streamed pipeline's engine.

Grain's `mp_prefetch` starts each worker with `spawn`, and the worker then
imports Grain, which imports JAX: about 2 s before the first batch, every
time a stream starts. These workers are forked from a `forkserver` that has
imported only examples.py (numpy and Pillow), so a pool starts in a fraction
of a second. One pool (`Workers`) serves a whole training run: every epoch
of the training stream and every evaluation during it, each a transform
registered before the first batch and installed in each worker once.

Batch b of a transform is rows [b * size, (b + 1) * size), a pure function
of b, so the output is the same for any worker count; `prefetch` batches per
worker are in flight at once for each stream, which bounds memory.
"""

import collections
import concurrent.futures
import multiprocessing
import pickle
from collections.abc import Iterator

_transforms: list = []  # Each worker's transforms, installed once when the worker starts.
_PRELOAD = ["resnet_jax.data.examples"]


def _install(blobs: list[bytes]) -> None:
  global _transforms
  _transforms = [pickle.loads(blob) for blob in blobs]


def _batch(key: int, start: int, size: int) -> dict:
  from resnet_jax.data.examples import make_batch
  return make_batch(_transforms[key], start, size)


def _context() -> multiprocessing.context.BaseContext:
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(_PRELOAD)  # Takes effect when the server first starts.
  return context


class Workers:
  """`count` worker processes for the transforms registered before the first batch.

  They start with the first `batches` call and stop at `close`; a transform
  cannot be added once they run (each worker received the list at start).
  """

  def __init__(self, count: int):
    if count < 1:
      raise ValueError(f"Workers needs at least one process, not {count}")
    self.count = count
    self._blobs: list[bytes] = []
    self._executor = None
    self._closed = False

  def register(self, transform) -> int:
    """The key under which `batches` makes batches of `transform`."""
    if self._executor is not None or self._closed:
      raise RuntimeError("register every transform before the workers start")
    self._blobs.append(pickle.dumps(transform))
    return len(self._blobs) - 1

  @property
  def started(self) -> bool:
    return self._executor is not None

  def submit(self, key: int, start: int, size: int) -> concurrent.futures.Future:
    if self._closed:
      raise RuntimeError("these workers were closed")
    if self._executor is None:
      self._executor = concurrent.futures.ProcessPoolExecutor(
          max_workers=self.count, mp_context=_context(), initializer=_install,
          initargs=(self._blobs,))
    return self._executor.submit(_batch, key, start, size)

  def batches(self, key: int, *, batch_size: int, first_batch: int, num_batches: int,
              prefetch: int = 2) -> "Batches":
    """Batches first_batch.. of transform `key`, in order."""
    return Batches(self, key, batch_size=batch_size, first_batch=first_batch,
                   num_batches=num_batches, prefetch=prefetch)

  def close(self) -> None:
    """Stops the processes, dropping work not yet started; idempotent."""
    self._closed = True
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None

  def __enter__(self) -> "Workers":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class Batches:
  """An iterator over one stream's batches; `close` drops its batches not yet taken.

  With `owns_workers`, closing it (or an error in a batch) also stops the
  workers.
  """

  def __init__(self, workers: Workers, key: int, *, batch_size: int, first_batch: int,
               num_batches: int, prefetch: int = 2, owns_workers: bool = False):
    self._workers, self._key, self._owns = workers, key, owns_workers
    self._batch_size = batch_size
    self._next, self._end = first_batch, first_batch + max(0, num_batches)
    self._depth = max(1, workers.count * max(1, prefetch))
    self._pending: collections.deque = collections.deque()
    self._closed = False

  def _fill(self) -> None:
    while len(self._pending) < self._depth and self._next < self._end:
      self._pending.append(self._workers.submit(
          self._key, self._next * self._batch_size, self._batch_size))
      self._next += 1

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self._closed:
      raise StopIteration
    self._fill()
    if not self._pending:
      raise StopIteration
    try:
      batch = self._pending.popleft().result()
    except BaseException:
      self.close()
      raise
    self._fill()  # Keep the workers busy while the caller uses this batch.
    return batch

  def close(self) -> None:
    """Idempotent."""
    if self._closed:
      return
    self._closed = True
    for future in self._pending:
      future.cancel()
    self._pending.clear()
    if self._owns:
      self._workers.close()

  def __enter__(self) -> "Batches":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def own_batches(transform, *, batch_size: int, first_batch: int, num_batches: int, workers: int,
              prefetch: int = 2) -> Batches:
  """Batches of one transform from workers of its own, stopped when the batches are closed."""
  pool = Workers(workers)
  key = pool.register(transform)
  return Batches(pool, key, batch_size=batch_size, first_batch=first_batch,
                 num_batches=num_batches, prefetch=prefetch, owns_workers=True)
