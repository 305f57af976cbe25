"""Orbax checkpoints: the latest N and the best by eval accuracy, saved async.

A checkpoint directory `<workdir>/checkpoints/<step>/` holds three items:
`state` (a dict with `params`, `batch_stats` and, for training checkpoints,
`opt_state`, `step` and, with config.ema_decay > 0, `ema`), `config` (the
resolved config as JSON) and `checksums` (one number per array of `state`);
training adds `clock` (the run's time as JSON), which older checkpoints lack.
Converted PyTorch weights use the same layout without `opt_state`.

Orbax writes each checkpoint into `<step>.orbax-checkpoint-tmp` and renames it
when complete, so a killed save leaves only that folder, which the next run
deletes. It does not notice every damage after the fact, though: a truncated
or missing file fails the restore, but changed bytes inside a data file
restore silently as other numbers. The checksums catch those.

A pruned step is renamed into `.deleted/` (one atomic rename), which the writer
empties at its next save: readers pin steps by hard links (pins.py) and must
see a step whole or not at all, never half deleted.
"""

import asyncio.base_events
import gc
import glob
import os
import re
import shutil
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from resnet_jax.checkpoints import checksums as array_checksums, pins
from resnet_jax.errors import UserError

BEST_METRIC = "eval_accuracy"
ITEMS = ("state", "config", "checksums", "clock")


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (full disk, lost permission); earlier ones are intact."""


class DamagedCheckpointError(Exception):
  """A checkpoint reads back, but not as it was written."""


class CheckpointGone(Exception):
  """A checkpoint was deleted before it could be read: the run writing the workdir pruned it."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def verify(step_dir: str, state: Any, saved: Mapping[str, int]) -> None:
  """Raises DamagedCheckpointError when a restored array differs from what was saved."""
  actual = array_checksums.checksums(state)
  changed = [key for key, value in saved.items() if key in actual and actual[key] != value]
  if changed:
    raise DamagedCheckpointError(f"{len(changed)} array(s) in {step_dir} do not match the "
                                 f"checksums saved with them, first {changed[0]}")


def storage_failure(error: BaseException) -> str | None:
  """The reason, when error is a failure of the storage (full disk, permissions), else None."""
  if isinstance(error, OSError) and error.errno is not None:
    return os.strerror(error.errno)
  # Tensorstore (which Orbax writes arrays with) raises ValueError naming the OS error code.
  if code := re.search(r"os_error_code='?(\d+)", str(error)):
    return os.strerror(int(code.group(1)))
  return None


def _mib(size_bytes: int) -> str:
  return f"{size_bytes / 2**20:.{1 if size_bytes >= 2**20 else 3}f} MiB"


def size_on_disk(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.stat(os.path.join(root, name)).st_blocks * 512
      except OSError:
        pass
  return total


class Checkpointer:
  """Saves and restores training checkpoints of one workdir."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False,
               shown_as: str | None = None):
    _quiet_orbax_leftovers()
    self.directory = os.path.abspath(directory)
    self.shown = shown_as or self.directory  # Where messages say the checkpoints are.
    if not read_only:
      _check_creatable(self.directory)
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=max(1, keep)),
        pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # A reader neither creates, cleans nor saves. Orbax's own read_only option
    # would do the same but logs a warning at every open. best_fn only makes Orbax
    # write each checkpoint's metrics (without it there are none, and the best
    # checkpoint cannot be told once the run has ended); the policy decides what stays.
    # A pruned step is renamed into .deleted/ in one step and deleted there later, so
    # that a reader pinning it (pins.py) gets all its files or an ENOENT, never a part.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=lambda m: m[BEST_METRIC],
        enable_async_checkpointing=not read_only,
        cleanup_tmp_directories=not read_only, create=not read_only,
        save_interval_steps=0 if read_only else 1,
        todelete_subdir=None if read_only else pins.DELETED)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    if not read_only:
      self._clean_up()  # What a killed run or reader left.
    self.keep = keep
    self.read_only = read_only
    self._saving = None  # The step of the save in flight, if any.
    self._failed = False
    self._abandoned = False

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def latest_complete_step(self) -> int | None:
    """The newest step on disk now (Orbax renames a save into place only once complete)."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return None
    return max((int(n) for n in names if n.isdigit()
                and os.path.isdir(os.path.join(self.directory, n))), default=None)

  def best_step(self) -> int | None:
    """The step with the highest eval accuracy; the latest where none has one."""
    best, best_value = None, None
    for step in self.steps():
      try:
        metrics = self.manager.metrics(step) or {}
      except Exception:  # Pruned since listed (a reader of a live workdir): not a candidate.
        if not os.path.isdir(os.path.join(self.directory, str(step))):
          continue
        metrics = {}
      value = metrics.get(BEST_METRIC)
      if value is not None and (best_value is None or value >= best_value):
        best, best_value = step, value
    return best if best is not None else self.latest_step()

  def save(self, step: int, state: Mapping[str, Any], config: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None, force: bool = False,
           clock: Mapping[str, Any] | None = None) -> bool:
    """Starts an asynchronous save (with the run's clock if given); returns whether it started.

    Raises CheckpointWriteError when the disk has no room for it (judged by
    the size of the latest checkpoint) or when writing it, or the previous
    one, fails.
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only")
    if not force and not self.manager.should_save(step):
      return False
    self.wait()  # Surfaces a failure of the previous save before starting this one.
    self._clean_up()  # Frees the steps that the previous save pruned.
    self._check_free_space(step, state)
    clock_item = {"clock": ocp.args.JsonSave(dict(clock))} if clock is not None else {}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(dict(config)),
                              checksums=ocp.args.JsonSave(array_checksums.checksums(state)),
                              **clock_item)
    self._saving = step
    try:
      return self.manager.save(step, args=args, metrics=dict(metrics) if metrics else None,
                               force=force)
    except Exception as e:
      self._raise_write_error(e)

  def wait(self) -> None:
    """Blocks until the save in flight is on disk; raises CheckpointWriteError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      self._raise_write_error(e)
    self._saving = None

  def _clean_up(self) -> None:
    """Deletes the pruned steps and the pins of readers that are gone (the lead process only)."""
    if jax.process_index() == 0:
      pins.empty_deleted(self.directory)
      pins.remove_stale(self.directory)

  def _check_free_space(self, step: int, state: Mapping[str, Any]) -> None:
    latest = self.latest_step()
    needed = (size_on_disk(os.path.join(self.directory, str(latest))) if latest is not None
              else sum(x.nbytes for x in jax.tree.leaves(state)))
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      self._failed = True
      raise CheckpointWriteError(
          f"no room for checkpoint {os.path.join(self.directory, str(step))}: "
          f"{_mib(free)} free, about {_mib(needed)} needed; "
          f"{self._intact()}: free disk space (or lower --config.keep_checkpoints, now "
          f"{self.keep}), then rerun the same command to resume")

  def _raise_write_error(self, error: Exception):
    reason = storage_failure(error)
    if reason is None:
      raise error
    self._failed = True
    step, self._saving = self._saving, None
    # Free what the failed save took: the next run would delete it anyway.
    for tmp in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(tmp, ignore_errors=True)
    raise CheckpointWriteError(
        f"could not write checkpoint {os.path.join(self.directory, str(step))} ({reason}); "
        f"{self._intact()}: free disk space (or lower --config.keep_checkpoints, now "
        f"{self.keep}), then rerun the same command to resume") from None

  def _intact(self) -> str:
    self.manager.reload()
    latest = self.latest_step()
    return ("the checkpoints already written are intact, the latest at step "
            f"{latest}" if latest is not None else "no earlier checkpoint was lost")

  def restore(self, step: int, target: Mapping[str, Any] | None = None) -> dict:
    """Restores `state` at `step`, onto target's shapes and shardings if given.

    Without a target, every array comes back replicated on this process's
    devices: Orbax would otherwise ask for the devices the checkpoint was
    saved from, and refuse one saved on 8 GPUs when read on 1.
    """
    target = self._replicated_here(step) if target is None else self._fit_items(step, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    args = ocp.args.StandardRestore(abstract)
    state = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    if os.path.isdir(os.path.join(self.directory, str(step), "checksums")):  # Older have none.
      saved = self.manager.restore(
          step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
      verify(os.path.join(self.shown, str(step)), state, saved)
    return state

  def _fit_items(self, step: int, target: Mapping[str, Any]) -> dict:
    """target, holding just the top-level items saved at step; those it lacks as saved.

    Optional items (the weight EMA) come and go with the config: a checkpoint
    written before EMA existed still resumes a run with it on, and the other
    way round; the train state decides what to do with what it gets.
    """
    saved = self._replicated_here(step)
    return {name: target[name] if name in target else value for name, value in saved.items()}

  def _replicated_here(self, step: int) -> Any:
    """The saved state's shapes and dtypes, each replicated over every current device."""
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "state")
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ("all",)),
                                          jax.sharding.PartitionSpec())
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        metadata.tree)

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def restore_clock(self, step: int) -> dict | None:
    """The run's clock saved at step; None where the checkpoint has none (saved before it was)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "clock")):
      return None
    args = ocp.args.Composite(clock=ocp.args.JsonRestore())
    return self.manager.restore(step, args=args)["clock"]

  def restore_newest_intact(self, target: Mapping[str, Any] | None = None,
                            steps: list[int] | None = None) -> tuple[int, dict] | None:
    """Restores the newest checkpoint that reads back whole, warning about any that do not."""
    for step in sorted(self.steps() if steps is None else steps, reverse=True):
      try:
        return step, self.restore(step, target)
      except Exception as e:  # A damaged checkpoint fails in many ways; skip it.
        warn_damaged(os.path.join(self.shown, str(step)), e)
    return None

  def abandon(self) -> None:
    """Gives up a save in flight (an abort): close() then neither waits for nor finalises it."""
    self._abandoned = True

  def move_aside(self, step: int, destination: str) -> str:
    """Moves one step's folder out of the way (keeping it to look at); returns where it went."""
    os.makedirs(destination, exist_ok=True)
    target = os.path.join(destination, str(step))
    suffix = 1
    while os.path.exists(target):
      target, suffix = os.path.join(destination, f"{step}-{suffix}"), suffix + 1
    shutil.move(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    return target

  def close(self) -> None:
    if self._abandoned:
      return  # Closing would wait for the save; its tmp folder is deleted by the next run.
    if self._failed:  # Orbax would raise the failure again; it has been reported.
      try:
        self.manager.close()
      except Exception:
        pass
      return
    self.wait()
    self.manager.close()
    if not self.read_only:
      self._clean_up()


def _check_creatable(directory: str) -> None:
  """Raises UserError when directory cannot be a folder because a file stands in its path."""
  existing = directory
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f"cannot write checkpoints to {directory}: {existing} is a file, not a "
                    "folder: pass a folder path")


def warn_damaged(step_dir: str, error: Exception) -> None:
  """Logs that the checkpoint in step_dir failed to read back, and why, on one line."""
  reason = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
  logging.warning("checkpoint %s is damaged and was skipped (%s: %s)", step_dir,
                  type(error).__name__, reason[:300])
  discard_failed_restore()


# Where the leftovers come from; told by place, not by message, so that a reworded or renamed
# Orbax function still matches.
_ORBAX_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__))), "")
_ASYNCIO_BASE_EVENTS = os.path.abspath(asyncio.base_events.__file__)


def _is_restore_leftover(unraisable: Any) -> bool:
  """Whether an unraisable report is a leftover of a failed Orbax read or save.

  Either an unawaited coroutine of Orbax's own code, or TensorStore completing
  a read into an event loop that has closed: a RuntimeError raised by asyncio's
  `_check_closed` (nothing of ours runs an event loop).
  """
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and os.path.abspath(code.co_filename).startswith(_ORBAX_DIR):
    return True
  if not isinstance(unraisable.exc_value, RuntimeError):
    return False
  frames = list(traceback.walk_tb(unraisable.exc_traceback))
  return bool(frames) and (os.path.abspath(frames[-1][0].f_code.co_filename) ==
                           _ASYNCIO_BASE_EVENTS and frames[-1][0].f_code.co_name == "_check_closed")


def discard_failed_restore() -> None:
  """Collects the unawaited reads of a failed restore now, while nothing else is in flight."""
  gc.collect()


def _quiet_orbax_leftovers() -> None:
  """Keeps what a failed Orbax read or save leaves behind from printing reports.

  When one array of a damaged checkpoint cannot be read, or a save fails
  (a full disk), Orbax raises at once, leaving the reads of the other arrays
  unawaited and TensorStore's completions for them aimed at an event loop
  that has closed, some before the call has even returned. Each would print
  an "Exception ignored" report; they hold nothing of ours. Installed with
  the first Checkpointer, the hook drops exactly those reports (everything
  else still reaches the previous hook). It stays installed: the reports come
  from TensorStore's threads and the garbage collector, during the next
  restore or at exit as well (seen with orbax-checkpoint 0.12.8), at times no
  scope around a restore covers. tests/checkpoints/test_checkpointing.py
  provokes them with the installed Orbax and fails if they change shape.
  """
  global _leftovers_hook_installed
  if not _leftovers_hook_installed:
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: (None if _is_restore_leftover(unraisable)
                                             else previous(unraisable))
    _leftovers_hook_installed = True


_leftovers_hook_installed = False
