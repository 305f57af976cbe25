"""Worker processes that make whole batches, returned in order: the streamed pipeline's engine.

Grain's `mp_prefetch` starts each worker with `spawn`, and the worker then
imports Grain, which imports JAX: about 2 s before the first batch, every
time a stream starts. These workers are forked from a `forkserver` that has
imported only examples.py (numpy and Pillow), so a pool starts in a fraction
of a second. One pool (`Workers`) serves a whole training run: every epoch
of the training stream and every evaluation during it. Its transforms are
given when it is built, the only time they can be, since each worker receives
them all when it starts; a stream of a transform the pool lacks is refused
when it is asked for, before any batch.

Batch b of a transform is rows [b * size, (b + 1) * size), a pure function
of b, so the output is the same for any worker count; `prefetch` batches per
worker are in flight at once for each stream, which bounds memory.

A worker stacks its batch straight into a slot file in /dev/shm (memory,
reserved with posix_fallocate so that a full /dev/shm is an error, not a
SIGBUS), and the main process copies it out: two copies, against five for
a batch pickled through the executor's pipe, which stays the fallback where
/dev/shm is missing or full. Slot b % depth of a stream is reused once
batch b has been copied out; the files are removed when the pool closes,
and a later pool removes those of a process that died.
"""

import collections
import concurrent.futures
import glob
import itertools
import mmap
import multiprocessing
import os
import pickle
from collections.abc import Iterator, Sequence

import numpy as np

_transforms: list = []  # Each worker's transforms, installed once when the worker starts.
_PRELOAD = ["resnet_jax.data.examples"]
SLOT_DIR = "/dev/shm"
_SLOT_PREFIX = "resnet_jax-batch-"
_ALIGN = 64
_pools = itertools.count()
_mapped: dict[str, mmap.mmap] = {}  # Slot files this process has mapped, by path.


def _install(blobs: list[bytes]) -> None:
  global _transforms
  _transforms = [pickle.loads(blob) for blob in blobs]


def _map(path: str, size: int, create: bool) -> mmap.mmap | None:
  """At least `size` bytes of slot file `path`, mapped (and kept) by this process; None
  where it cannot be (no /dev/shm, or no room in it)."""
  held = _mapped.get(path)
  if held is not None and len(held) >= size:
    return held
  try:
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    try:
      if create and os.fstat(fd).st_size < size:
        os.posix_fallocate(fd, 0, size)  # ENOSPC now, rather than SIGBUS on a write.
      mapped = mmap.mmap(fd, size)
    finally:
      os.close(fd)
  except (OSError, ValueError):
    return None
  if held is not None:
    held.close()
  _mapped[path] = mapped
  return mapped


def _layout(rows: list[dict]) -> tuple[list[tuple[str, str, tuple, int]], int]:
  """(name, dtype, shape, offset) of each stacked array, and the bytes they take."""
  layout, offset = [], 0
  for name in rows[0]:
    first = np.asarray(rows[0][name])
    shape = (len(rows), *first.shape)
    layout.append((name, first.dtype.str, shape, offset))
    offset += -(-int(np.prod(shape)) * first.dtype.itemsize // _ALIGN) * _ALIGN
  return layout, offset


def _batch(key: int, start: int, size: int, slot: str | None):
  """One batch, stacked into slot file `slot` (returns where it lies) or returned whole."""
  from resnet_jax.data.examples import make_rows
  rows = make_rows(_transforms[key], start, size)
  layout, nbytes = _layout(rows)
  mapped = _map(slot, nbytes, create=True) if slot else None
  if mapped is None:
    return {name: np.stack([row[name] for row in rows]) for name, *_ in layout}
  for name, dtype, shape, offset in layout:
    np.stack([row[name] for row in rows], out=np.ndarray(shape, dtype, mapped, offset))
  return slot, layout, nbytes


def _read_slot(slot: str, layout, nbytes: int) -> dict:
  mapped = _map(slot, nbytes, create=False)
  if mapped is None:
    raise RuntimeError(f"the batch slot {slot} could not be read back")
  return {name: np.array(np.ndarray(shape, dtype, mapped, offset))
          for name, dtype, shape, offset in layout}


def _context() -> multiprocessing.context.BaseContext:
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(_PRELOAD)  # Takes effect when the server first starts.
  return context


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # PermissionError: alive, another user's.
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def remove_stale_slots(directory: str = SLOT_DIR) -> None:
  """Removes the slot files of pools whose process no longer runs on this machine."""
  for path in glob.glob(os.path.join(directory, _SLOT_PREFIX + "*")):
    pid = os.path.basename(path)[len(_SLOT_PREFIX):].split("-", 1)[0]
    if pid.isdigit() and not _alive(int(pid)):
      try:
        os.unlink(path)
      except OSError:
        pass


class Workers:
  """`count` worker processes for the transforms given here, the only ones they can run.

  The processes start with the first batch and stop at `close`; each
  receives every transform when it starts, which is why they are all given
  at construction and none can be added later.
  """

  def __init__(self, count: int, transforms: Sequence, slot_dir: str | None = SLOT_DIR):
    if count < 1:
      raise ValueError(f"Workers needs at least one process, not {count}")
    if not transforms:
      raise ValueError("Workers needs the transforms it is to run: pass every stream's, "
                       "e.g. Workers(count, [train_rows, eval_rows])")
    self.count = count
    self._transforms = tuple(transforms)
    self._blobs = [pickle.dumps(transform) for transform in self._transforms]
    self._executor = None
    self._closed = False
    usable = slot_dir is not None and os.path.isdir(slot_dir) and os.access(slot_dir, os.W_OK)
    self._slot_base = (os.path.join(slot_dir, f"{_SLOT_PREFIX}{os.getpid()}-{next(_pools)}-")
                       if usable else None)
    self._active: set[int] = set()  # Keys with a Batches open: one at a time shares slots.

  def key(self, transform) -> int:
    """Where `transform` (or one equal to it) is among those the pool was built with."""
    for key, held in enumerate(self._transforms):
      if held is transform or held == transform:
        return key
    raise ValueError(f"these workers were not built with this {type(transform).__name__}: "
                     "pass it in Workers(count, transforms) beside the others, or give its "
                     "stream worker processes of its own")

  def slot(self, key: int, index: int) -> str | None:
    return f"{self._slot_base}{key}-{index}" if self._slot_base else None

  def submit(self, key: int, start: int, size: int, slot: str | None
             ) -> concurrent.futures.Future:
    if self._closed:
      raise RuntimeError("these workers were closed")
    if self._executor is None:
      if self._slot_base:
        remove_stale_slots(os.path.dirname(self._slot_base))
      self._executor = concurrent.futures.ProcessPoolExecutor(
          max_workers=self.count, mp_context=_context(), initializer=_install,
          initargs=(self._blobs,))
    return self._executor.submit(_batch, key, start, size, slot)

  def batches(self, transform, *, batch_size: int, first_batch: int, num_batches: int,
              prefetch: int = 2) -> "Batches":
    """Batches first_batch.. of `transform` (one the pool was built with), in order."""
    return Batches(self, self.key(transform), batch_size=batch_size, first_batch=first_batch,
                   num_batches=num_batches, prefetch=prefetch)

  def close(self) -> None:
    """Stops the processes, dropping work not yet started, and removes the slots; idempotent."""
    self._closed = True
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None
    if self._slot_base:
      for path in glob.glob(glob.escape(self._slot_base) + "*"):
        mapped = _mapped.pop(path, None)
        if mapped is not None:
          mapped.close()
        try:
          os.unlink(path)
        except OSError:
          pass

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
    if key in workers._active:
      raise RuntimeError(f"transform {key} already has a stream open on these workers")
    workers._active.add(key)
    self._workers, self._key, self._owns = workers, key, owns_workers
    self._batch_size = batch_size
    self._next, self._end = first_batch, first_batch + max(0, num_batches)
    self._depth = max(1, workers.count * max(1, prefetch))
    self._pending: collections.deque = collections.deque()
    self._closed = False

  def _fill(self) -> None:
    # Batch b goes to slot b % depth: batch b - depth, its last user, was copied out already.
    while len(self._pending) < self._depth and self._next < self._end:
      slot = self._workers.slot(self._key, self._next % self._depth)
      self._pending.append(self._workers.submit(
          self._key, self._next * self._batch_size, self._batch_size, slot))
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
      if isinstance(batch, tuple):
        batch = _read_slot(*batch)
    except BaseException:
      self.close()
      raise
    self._fill()  # Keep the workers busy while the caller uses this batch.
    return batch

  def close(self) -> None:
    """Idempotent. Waits for its batches already being made, which write into its slots."""
    if self._closed:
      return
    self._closed = True
    running = [future for future in self._pending if not future.cancel()]
    self._pending.clear()
    concurrent.futures.wait(running)
    self._workers._active.discard(self._key)
    if self._owns:
      self._workers.close()

  def __enter__(self) -> "Batches":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def own_batches(transform, *, batch_size: int, first_batch: int, num_batches: int,
                workers: int, prefetch: int = 2) -> Batches:
  """Batches of one transform from workers of its own, stopped when the batches are closed."""
  pool = Workers(workers, [transform])
  return Batches(pool, 0, batch_size=batch_size, first_batch=first_batch,
                 num_batches=num_batches, prefetch=prefetch, owns_workers=True)
