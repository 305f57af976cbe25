"""Orbax checkpoints: the latest N and the best by eval accuracy, saved async.

A checkpoint directory `<workdir>/checkpoints/<step>/` holds three items:
`state` (a dict with `params`, `batch_stats` and, for training checkpoints,
`opt_state` and `step`), `config` (the resolved config as JSON) and
`checksums` (one number per array of `state`). Converted PyTorch weights use
the same layout without `opt_state`.

Orbax writes each checkpoint into `<step>.orbax-checkpoint-tmp` and renames it
when complete, so a killed save leaves only that folder, which the next run
deletes. It does not notice every damage after the fact, though: a truncated
or missing file fails the restore, but changed bytes inside a data file
restore silently as other numbers. The checksums catch those.
"""

import gc
import glob
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from resnet_jax.errors import UserError

BEST_METRIC = "eval_accuracy"
ITEMS = ("state", "config", "checksums")


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (full disk, lost permission); earlier ones are intact."""


class DamagedCheckpointError(Exception):
  """A checkpoint reads back, but not as it was written."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def checksums(tree: Any) -> dict[str, int]:
  """Per array of tree, the sum of its bytes as uint32 words, modulo 2**32.

  Any single changed bit changes the sum. Computed on the host from the
  values in JAX's canonical dtype, so that a checkpoint restored with or
  without a target, on any devices, gives the same numbers.
  """
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.asarray(jax.device_get(leaf))
    array = np.ascontiguousarray(array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False))
    data = array.reshape(-1).view(np.uint8)
    data = np.concatenate([data, np.zeros(-data.size % 4, np.uint8)])
    sums[jax.tree_util.keystr(path)] = int(data.view("<u4").sum(dtype=np.uint64) % 2**32)
  return sums


def verify(step_dir: str, state: Any, saved: Mapping[str, int]) -> None:
  """Raises DamagedCheckpointError when a restored array differs from what was saved."""
  actual = checksums(state)
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

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=max(1, keep)),
        pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    # A reader neither creates, cleans nor saves. Orbax's own read_only option
    # would do the same but logs a warning at every open.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=not read_only,
        cleanup_tmp_directories=not read_only, create=not read_only,
        save_interval_steps=0 if read_only else 1)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self.keep = keep
    self.read_only = read_only
    self._saving = None  # The step of the save in flight, if any.
    self._failed = False

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the highest eval accuracy; the latest where none has one."""
    best, best_value = None, None
    for step in self.steps():
      metrics = self.manager.metrics(step) or {}
      value = metrics.get(BEST_METRIC)
      if value is not None and (best_value is None or value >= best_value):
        best, best_value = step, value
    return best if best is not None else self.latest_step()

  def save(self, step: int, state: Mapping[str, Any], config: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
    """Starts an asynchronous save; returns whether one was started.

    Raises CheckpointWriteError when the disk has no room for it (judged by
    the size of the latest checkpoint) or when writing it, or the previous
    one, fails.
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only")
    if not force and not self.manager.should_save(step):
      return False
    self.wait()  # Surfaces a failure of the previous save before starting this one.
    self._check_free_space(step, state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(dict(config)),
                              checksums=ocp.args.JsonSave(checksums(state)))
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
    if target is None:
      target = self._replicated_here(step)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    args = ocp.args.StandardRestore(abstract)
    state = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    step_dir = os.path.join(self.directory, str(step))
    if os.path.isdir(os.path.join(step_dir, "checksums")):  # Older checkpoints have none.
      saved = self.manager.restore(
          step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
      verify(step_dir, state, saved)
    return state

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

  def restore_newest_intact(self, target: Mapping[str, Any] | None = None,
                            steps: list[int] | None = None) -> tuple[int, dict] | None:
    """Restores the newest checkpoint that reads back whole, warning about any that do not."""
    for step in sorted(self.steps() if steps is None else steps, reverse=True):
      try:
        return step, self.restore(step, target)
      except Exception as e:  # A damaged checkpoint fails in many ways; skip it.
        reason = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
        logging.warning("checkpoint %s is damaged and was skipped (%s: %s)",
                        os.path.join(self.directory, str(step)), type(e).__name__, reason[:300])
        _discard_failed_restore()
    return None

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
    if self._failed:  # Orbax would raise the failure again; it has been reported.
      try:
        self.manager.close()
      except Exception:
        pass
      return
    self.wait()
    self.manager.close()


def _is_restore_leftover(unraisable: Any) -> bool:
  error, where = unraisable.exc_value, repr(unraisable.object)
  return ((isinstance(error, RuntimeError) and "Event loop is closed" in str(error))
          or "_read_array_index_and_device_put" in where or "_read_and_create_array" in where)


def _discard_failed_restore() -> None:
  """Finalises, quietly, what a failed Orbax restore leaves behind.

  When one array of a damaged checkpoint cannot be read, Orbax's restore
  raises at once, leaving the reads of the other arrays unawaited and
  TensorStore's completions for them aimed at an event loop that has
  closed. Each would print an "Exception ignored" report when collected;
  they hold nothing of ours, so they are collected here, without reports.
  """
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: (None if _is_restore_leftover(unraisable)
                                           else hook(unraisable))
  try:
    time.sleep(0.05)  # TensorStore's threads finish the reads already under way.
    gc.collect()
  finally:
    sys.unraisablehook = hook


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """Maps a workdir, a checkpoints/ folder or one step's folder to (manager dir, step).

  The step is None when path names a whole directory of checkpoints: callers
  then take its best step.
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise UserError(f"checkpoint path {path} does not exist: pass a workdir or a "
                    "checkpoint directory written by resnet_jax")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isdir(os.path.join(path, "state")):
    name = os.path.basename(path)
    if name.isdigit():
      return os.path.dirname(path), int(name)
  if any(n.isdigit() for n in os.listdir(path)):
    return path, None
  raise UserError(f"{path} holds no resnet_jax checkpoint: pass a workdir, its "
                  "checkpoints/ folder, or one checkpoint step's folder")


class Restored(NamedTuple):
  """A checkpoint's model variables (host arrays), its saved config and its step."""
  variables: dict
  config: dict
  step: int


def load_variables(path: str, action: str = "using") -> Restored:
  """The one way to read a checkpoint for evaluation, prediction and fine-tuning.

  `path` is a workdir, its checkpoints/ folder or one step's folder; of a
  folder of checkpoints, the best step is read. Falls back to older steps
  when the chosen one is damaged, logging "...; {action} step N instead";
  raises UserError when nothing can be read.
  """
  directory, step = resolve_checkpoint(path)
  checkpointer = Checkpointer(directory, read_only=True)
  named = step is not None  # One step's folder: that one, or none.
  if step is None:
    step = checkpointer.best_step()
  if step is None:
    raise UserError(f"{path} holds no checkpoint: train first, or pass another path")
  steps = [step] if named else [s for s in checkpointer.steps() if s <= step]
  restored = checkpointer.restore_newest_intact(steps=steps)
  if restored is None:
    raise UserError(f"checkpoint {os.path.join(directory, str(step))} is damaged"
                    f"{'' if named else ', and so is every earlier one'}: pass another "
                    "checkpoint, or the workdir of another run")
  used_step, state = restored
  if used_step != step:
    logging.warning("the best checkpoint (step %d) is damaged; %s step %d instead", step, action,
                    used_step)
  try:
    config = checkpointer.restore_config(used_step)
  except Exception:
    config = {}
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
  return Restored(variables, config, used_step)
