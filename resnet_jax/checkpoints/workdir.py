"""The run directory: may it be written, does it hold this run, who runs in it, atomic writes.

One run per workdir: a training run holds `<workdir>/run.lock` (JSON: host,
pid, started; under SLURM also the job ID and restart count) from the end of
its set-up to its end. A second run refuses with the holder named; a lock
whose run is dead (same host and pid gone, or an earlier start of the same
SLURM job, requeued) is taken over with a warning. Of a multi-process run,
process 0 takes the lock for all and tells the others the outcome, so that
all go on or all refuse. Readers (`--mode=eval`, predict) take no lock.
"""

import dataclasses
import datetime
import json
import os
import socket
import tempfile
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from resnet_jax.checkpoints import checkpointing
from resnet_jax.checkpoints.processes import holder_alive, slurm_job, write_json
from resnet_jax.config import configuration
from resnet_jax.errors import UserError

LOCK_FILE = "run.lock"
_MESSAGE_BYTES = 2048  # Room for process 0's refusal, sent to the other processes.


def writable(folder: str) -> bool:
  """Whether a folder can be written, found by trying: os.access says yes to root on read-only mounts."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".resnet_jax_write_test", dir=folder))
    return True
  except OSError:
    return False


def check(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that cannot be written, that a live run holds, or that has other settings.

  Writes nothing: every process of a run calls it before set-up.
  """
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not writable(existing):
    raise UserError(f"workdir {workdir} cannot be created or written ({existing} is not a "
                    "writable folder): pass a writable --workdir")
  # Now, not only when taking the lock after set-up: the same job submitted twice
  # refuses at once instead of after loading data and compiling.
  refuse_if_in_use(workdir)
  # Without config.json (deleted, or never written), the checkpoints still tell
  # the architecture: resuming another one would call every checkpoint damaged.
  saved = configuration.read_saved(workdir) or checkpoint_config(workdir)
  if saved:
    configuration.check_same_architecture(saved, config, workdir)
    configuration.check_same_holdout(saved, config, workdir)


def checkpoint_config(workdir: str) -> dict | None:
  """The config saved with the newest checkpoint of workdir that has a readable one."""
  directory = checkpointing.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return None
  checkpointer = checkpointing.Checkpointer(directory, read_only=True)
  try:
    for step in reversed(checkpointer.steps()):
      try:
        return checkpointer.restore_config(step)
      except Exception:  # Damaged: an older one tells as well; resuming reports the damage.
        continue
  finally:
    checkpointer.close()
  return None


# The run lock ------------------------------------------------------------------


@dataclasses.dataclass
class RunLock:
  """This run's hold on <workdir>/run.lock; `holder` is None on processes other than 0."""
  path: str
  holder: dict | None

  def release(self) -> None:
    """Deletes the lock if it is still this run's (someone may have cleared it by hand)."""
    if self.holder is None:
      return
    try:
      if _read_holder(self.path) == self.holder:
        os.remove(self.path)
    except OSError as e:
      logging.warning("could not delete the lock %s (%s): delete it by hand before the next "
                      "run", self.path, e.strerror or e)
    self.holder = None


def acquire_lock(workdir: str) -> RunLock:
  """Takes <workdir>/run.lock for this run; UserError, on every process, if another run holds it."""
  path = os.path.join(workdir, LOCK_FILE)
  holder, message = None, ""
  if _is_lead():
    try:
      holder = _take(path, workdir)
    except UserError as e:
      message = str(e)
    except OSError as e:
      message = (f"cannot create the lock {path} ({e.strerror or e}): pass a writable "
                 "--workdir")
  message = _agree(message)
  if message:
    raise UserError(message)
  return RunLock(path, holder)


def refuse_if_in_use(workdir: str) -> None:
  """Raises UserError, on every process, when a live run holds the workdir's lock."""
  path = os.path.join(workdir, LOCK_FILE)
  message = ""
  if _is_lead():
    holder = _read_holder(path)
    if holder is not None and holder_alive(holder) is not False:
      message = _in_use_message(workdir, path, holder)
  message = _agree(message)
  if message:
    raise UserError(message)


def _take(path: str, workdir: str) -> dict:
  """Creates the lock file atomically, taking over a dead run's; raises UserError if held."""
  for _ in range(5):  # Each turn ends with the lock taken, refused, or a dead run's removed.
    mine = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            **slurm_job()}
    if _create_exclusive(path, mine):
      return mine
    holder = _read_holder(path)
    if holder is None:  # Released in between.
      continue
    if holder_alive(holder) is not False:
      raise UserError(_in_use_message(workdir, path, holder))
    if _remove_stale(path, holder):
      logging.warning("took over the lock %s of a run that is no longer running (%s)", path,
                      _describe(holder))
  raise UserError(f"could not take the lock {path}: other runs keep taking and leaving it; "
                  "start one run per workdir")


def _create_exclusive(path: str, holder: dict) -> bool:
  """Creates path holding the JSON of holder unless it exists; never shows a half-written file."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(holder, f)
  try:
    # A hard link is created whole or not at all, also over NFS, where O_EXCL was
    # long unreliable.
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:  # A filesystem without hard links.
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(holder, f)
    return True
  finally:
    os.remove(tmp)


def _remove_stale(path: str, holder: dict) -> bool:
  """Removes the lock of a dead run; False if path turned out to hold another run's lock."""
  # Renamed first, then looked at: two runs taking over the same dead lock must not
  # delete the lock that the faster of them has just created.
  aside = f"{path}.stale.{os.getpid()}"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return False
  if _read_holder(aside) == holder:
    os.remove(aside)
    return True
  try:
    os.link(aside, path)  # A live run's lock: put it back.
  except FileExistsError:
    pass
  os.remove(aside)
  return False


def _read_holder(path: str) -> dict | None:
  """The lock's content; None without a lock, {} for one that cannot be read."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on host {holder.get('host')}, since "
          f"{holder.get('started')}")


def _in_use_message(workdir: str, path: str, holder: dict) -> str:
  if not holder:
    return (f"workdir {workdir} holds a lock that cannot be read ({path}): if no run uses this "
            "workdir, delete it and rerun; otherwise pass another --workdir")
  return (f"workdir {workdir} is in use by another run ({_describe(holder)}): wait for it to "
          "end or stop it, or pass another --workdir; if that run is no longer running (its "
          f"node crashed), delete {path} and rerun")


def _is_lead() -> bool:
  import jax
  return jax.process_index() == 0


def _agree(message: str) -> str:
  """Process 0's message on every process of a run, so that all refuse or none does."""
  import jax
  if jax.process_count() == 1:
    return message
  from jax.experimental import multihost_utils
  encoded = np.zeros(_MESSAGE_BYTES, np.uint8)
  data = message.encode()[:_MESSAGE_BYTES]
  encoded[:len(data)] = np.frombuffer(data, np.uint8)
  agreed = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
  return bytes(agreed).rstrip(b"\0").decode(errors="replace")
