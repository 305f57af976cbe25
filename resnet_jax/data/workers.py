"""Worker processes that make whole batches, returned in order: the streamed pipeline's engine.

Grain's `mp_prefetch` starts each worker with `spawn`, and the worker then
imports Grain, which imports JAX: about 2 s before the first batch, every
time a stream starts. These workers are forked from a `forkserver` that has
imported only examples.py (numpy and Pillow), so a pool starts in a fraction
of a second, and one pool serves a whole training run, all epochs.

Batch b is rows [b * size, (b + 1) * size) of the transform, a pure function
of b, so the output is the same for any worker count; `prefetch` batches per
worker are in flight at once, which bounds memory.
"""

import collections
import concurrent.futures
import multiprocessing
import pickle
from collections.abc import Iterator

_transform = None  # Each worker's transform, installed once when the worker starts.
_PRELOAD = ["resnet_jax.data.examples"]


def _install(blob: bytes) -> None:
  global _transform
  _transform = pickle.loads(blob)


def _batch(start: int, size: int) -> dict:
  from resnet_jax.data.examples import make_batch
  return make_batch(_transform, start, size)


def _context() -> multiprocessing.context.BaseContext:
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(_PRELOAD)  # Takes effect when the server first starts.
  return context


class BatchPool:
  """Batches first_batch, first_batch+1, ... of `transform` (rows of `batch_size`), in order.

  Iterate to get them; `close` stops the workers (also on an error in one).
  """

  def __init__(self, transform, *, batch_size: int, first_batch: int, num_batches: int,
               workers: int, prefetch: int = 2):
    self._executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=_context(), initializer=_install,
        initargs=(pickle.dumps(transform),))
    self._batch_size = batch_size
    self._next, self._end = first_batch, first_batch + max(0, num_batches)
    self._depth = max(1, workers * max(1, prefetch))
    self._pending: collections.deque = collections.deque()

  def _fill(self) -> None:
    while len(self._pending) < self._depth and self._next < self._end:
      self._pending.append(self._executor.submit(
          _batch, self._next * self._batch_size, self._batch_size))
      self._next += 1

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    if self._executor is None:
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
    """Stops the workers, dropping batches not yet taken; idempotent."""
    if self._executor is not None:
      for future in self._pending:
        future.cancel()
      self._pending.clear()
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None

  def __enter__(self) -> "BatchPool":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
