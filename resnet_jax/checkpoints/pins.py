"""Pins: a reader's own hard links to one checkpoint, which the writer's pruning cannot delete.

A reader (`restore.load_variables`: eval, predict, export, fine-tuning) of a
live run makes several Orbax reads of one step, while the run prunes old
steps after each save. Instead of racing the pruning, the reader links every
file of the chosen step into `<checkpoints>/.readers/<reader>/<step>/` and
reads from there: deleting the step removes only its names under
checkpoints/, while the files' data stays reachable through the pin until the
reader removes it. Why this design rather than the others:

- Read leases (a file per reader that the writer's pruning honours) would
  have to hook into Orbax's preservation policy and its background deleter,
  and the writer could not tell a dead lease on another host from a slow
  reader: it keeps checkpoints, or deletes one under a reader, by guesswork.
- A stable copy published by the writer costs every save a second write.
- A pin costs one link per file (a few dozen per step), needs nothing from
  the writer's timing and never blocks it, and works over NFS, where hard
  links are atomic on the server.

The one thing the writer does for pins is delete atomically: Orbax's own
deleter removes a step's files from several threads, so a reader linking
while it runs could end up with some files and no error. The writer has
Orbax rename each pruned step into `<checkpoints>/.deleted/` first (one
atomic rename) and empties that folder at its next save. A pin is then
complete or fails with ENOENT, which means "this step was pruned: pick again".

A killed reader leaves its pin behind. The next reader or training run on
the same checkpoints removes pins of readers that are gone: on the same host
when their process has ended, on other hosts (where pids cannot be checked)
when their heartbeat file has not been touched for STALE_S seconds; a
reader touches it every HEARTBEAT_S seconds while it reads.
"""

import contextlib
import datetime
import errno
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from absl import logging

from resnet_jax.checkpoints import processes

READERS = ".readers"
DELETED = ".deleted"
HOLDER = "holder.json"  # The reader's host, pid and start; its mtime is the heartbeat.
HEARTBEAT_S = 60.0
STALE_S = 600.0  # Ten heartbeats missed: that reader is gone (or its clock is far off).

# Called as after_link(source_path) after each file is linked; tests use it to prune a
# step exactly while it is being pinned.
after_link: Callable[[str], None] | None = None


class StepGone(Exception):
  """The step was pruned before it could be pinned: the reader picks again."""


class CannotPin(Exception):
  """The checkpoints folder cannot take a pin (read-only to this reader): read in place."""


def readers_dir(directory: str) -> str:
  return os.path.join(directory, READERS)


@contextlib.contextmanager
def pinned(directory: str, step: int) -> Iterator[str]:
  """A folder holding `<step>/` linked from directory; removed on exit.

  Raises StepGone when the step is (or gets) deleted before all its files are
  linked, and CannotPin when no pin can be made in directory at all.
  """
  remove_stale(directory)
  root = _new_reader_folder(directory)
  beat = _Heartbeat(os.path.join(root, HOLDER))
  beat.start()
  try:
    _link_tree(os.path.join(directory, str(step)), os.path.join(root, str(step)))
    yield root
  finally:
    beat.stop()
    shutil.rmtree(root, ignore_errors=True)
    try:
      os.rmdir(readers_dir(directory))  # The last reader leaves no trace.
    except OSError:
      pass  # Other readers' pins are in it.


def _new_reader_folder(directory: str) -> str:
  name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  root = os.path.join(readers_dir(directory), name)
  try:
    try:
      os.makedirs(root)
    except FileNotFoundError:  # The last reader before this one removed .readers meanwhile.
      os.makedirs(root)
    processes.write_json(os.path.join(root, HOLDER), {
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
  except OSError as e:
    shutil.rmtree(root, ignore_errors=True)
    raise CannotPin(f"{e.strerror or e}") from None
  return root


def _link_tree(source: str, target: str) -> None:
  """Links every file under source into target; StepGone when any part of source vanishes."""
  def gone(error: OSError):
    raise StepGone(source) from error

  if not os.path.isdir(source):
    raise StepGone(source)
  # os.walk hides a folder that vanished; onerror makes that a StepGone too.
  for folder, _, names in os.walk(source, onerror=gone):
    relative = os.path.relpath(folder, source)
    os.makedirs(os.path.join(target, relative), exist_ok=True)
    for name in names:
      path = os.path.join(folder, name)
      _link(path, os.path.join(target, relative, name), source)
      if after_link is not None:
        after_link(path)
  # A step renamed away after its last link was pinned whole; one renamed before the
  # walk listed its top folder failed above. Nothing in between can go unnoticed.


def _link(path: str, link: str, source: str) -> None:
  try:
    os.link(path, link)
  except FileNotFoundError:
    raise StepGone(source) from None
  except OSError as e:
    if e.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
      raise
    # A filesystem without hard links: a copy pins as well (an open file outlives its name).
    try:
      shutil.copy2(path, link)
    except FileNotFoundError:
      raise StepGone(source) from None


class _Heartbeat:
  """Touches the holder file every HEARTBEAT_S seconds, so that other hosts see the reader live."""

  def __init__(self, path: str):
    self.path = path
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="pin-heartbeat")

  def start(self) -> None:
    self._thread.start()

  def _run(self) -> None:
    while not self._stopped.wait(HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        pass

  def stop(self) -> None:
    self._stopped.set()
    if self._thread.is_alive():
      self._thread.join()


def remove_stale(directory: str) -> list[str]:
  """Removes the pins of readers that are gone; returns their folders."""
  root = readers_dir(directory)
  try:
    names = os.listdir(root)
  except OSError:
    return []
  removed = []
  for name in names:
    folder = os.path.join(root, name)
    if _is_stale(folder):
      shutil.rmtree(folder, ignore_errors=True)
      removed.append(folder)
      logging.info("removed the pin %s of a reader that is no longer running", folder)
  return removed


def _is_stale(folder: str) -> bool:
  holder_path = os.path.join(folder, HOLDER)
  try:
    beat = os.stat(holder_path).st_mtime
    with open(holder_path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    # Being created (the holder comes right after the folder) or half removed: judged by the
    # folder's own age.
    try:
      beat, holder = os.stat(folder).st_mtime, {}
    except OSError:
      return False
  except (OSError, ValueError):
    holder = {}
  alive = processes.holder_alive(holder) if isinstance(holder, dict) and holder else None
  if alive is not None:  # This host's reader: its process tells.
    return not alive
  return time.time() - beat > STALE_S


def empty_deleted(directory: str) -> None:
  """Deletes what the writer's pruning renamed into <directory>/.deleted (the writer calls it)."""
  root = os.path.join(directory, DELETED)
  try:
    names = os.listdir(root)
  except OSError:
    return
  for name in names:
    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
