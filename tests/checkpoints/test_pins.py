"""Reading checkpoints that a training run prunes: pins (resnet_jax/checkpoints/pins.py).

Each interleaving is made on purpose: a writer in this process saves (and so
prunes) from inside a hook of the reader, at the exact point the test names.
The same against the real command, in subprocesses: test_faults.py.
"""

import errno
import json
import logging
import os
import shutil
import socket

import numpy as np
import pytest

from resnet_jax.checkpoints import checkpointing, pins, restore
from resnet_jax.errors import UserError


def state(step: int) -> dict:
  return {"params": {"w": np.full(3, step, np.float32)}, "batch_stats": {"m": np.zeros(2)}}


def write_checkpoints(directory, steps, keep: int = 3) -> None:
  writer = checkpointing.Checkpointer(str(directory), keep=keep)
  for step in steps:
    writer.save(step, state(step), {"model": "resnet_tiny"}, force=True)
  writer.close()


class Writer:
  """A training run's checkpointer keeping one step: each save prunes the one before."""

  def __init__(self, directory):
    self.checkpointer = checkpointing.Checkpointer(str(directory), keep=1)

  def save(self, step: int) -> None:
    self.checkpointer.save(step, state(step), {"model": "resnet_tiny"}, force=True)
    self.checkpointer.wait()  # Orbax prunes in its background thread, once the save is done.

  def close(self) -> None:
    self.checkpointer.close()


def step_names(directory) -> list[str]:
  return sorted(n for n in os.listdir(directory) if n.isdigit())


def test_step_pruned_while_read_is_read_whole(tmp_path, monkeypatch, caplog):
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1, 2])
  writer = Writer(directory)
  read = checkpointing.Checkpointer.restore
  pruned = []

  def prune_then_read(self, step, target=None):
    """The writer saves step 3, pruning step 2, after the reader chose and pinned step 2."""
    if step == 2 and not pruned:
      writer.save(3)
      pruned.append(step_names(directory))
    return read(self, step, target)

  monkeypatch.setattr(checkpointing.Checkpointer, "restore", prune_then_read)
  caplog.set_level(logging.INFO)
  restored = restore.load_variables(str(tmp_path))
  writer.close()
  assert pruned == [["3"]]  # Step 2 was gone from checkpoints/ while it was read.
  assert restored.step == 2 and restored.config == {"model": "resnet_tiny"}
  np.testing.assert_array_equal(restored.variables["params"]["w"], [2, 2, 2])
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "damaged" in m or "was deleted" in m], messages
  assert not (directory / pins.READERS).exists()  # The reader removed its pin.
  assert os.listdir(directory / pins.DELETED) == []  # The writer deleted what it pruned.


def test_step_pruned_while_being_pinned_is_picked_again_not_called_damaged(
    tmp_path, monkeypatch, caplog):
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1, 2])
  writer = Writer(directory)
  linked, next_step = [], [3]

  def prune_after_first_link(path):
    """The step is pruned when one of its files has been linked, the others not yet."""
    linked.append(path)
    if len(linked) == 1:
      writer.save(next_step[0])
      next_step[0] += 1

  monkeypatch.setattr(pins, "after_link", prune_after_first_link)
  caplog.set_level(logging.INFO)
  restored = restore.load_variables(str(tmp_path))
  assert linked[0].startswith(str(directory / "2") + os.sep)
  assert restored.step == 3
  np.testing.assert_array_equal(restored.variables["params"]["w"], [3, 3, 3])
  messages = [r.getMessage() for r in caplog.records]
  assert (f"checkpoint {directory}/2 was deleted before it could be read (pruned by the run "
          "writing there): picking again") in messages
  assert not [m for m in messages if "damaged" in m], messages
  assert not (directory / pins.READERS).exists()

  # Named by its folder, no other step will do: one line saying so.
  linked.clear()
  with pytest.raises(UserError, match=rf"^checkpoint {directory}/3 was deleted before it could "
                                      r"be read \(the run writing there prunes old checkpoints\)"):
    restore.load_variables(str(directory / "3"))
  writer.close()
  assert linked[0].startswith(str(directory / "3") + os.sep) and step_names(directory) == ["4"]


def test_without_a_pin_the_reader_reads_in_place_and_a_pruned_step_is_picked_again(
    tmp_path, monkeypatch, caplog):
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1, 2])
  writer = Writer(directory)
  read = checkpointing.Checkpointer.restore

  def cannot_pin(directory):
    raise pins.CannotPin("Read-only file system")

  def prune_then_read(self, step, target=None):
    if step == 2 and (directory / "2").exists():
      writer.save(3)
    return read(self, step, target)

  # A checkpoints folder this reader may not write to (a read-only mount, another user's run).
  monkeypatch.setattr(pins, "_new_reader_folder", cannot_pin)
  monkeypatch.setattr(checkpointing.Checkpointer, "restore", prune_then_read)
  caplog.set_level(logging.INFO)
  restored = restore.load_variables(str(tmp_path))
  writer.close()
  assert restored.step == 3
  messages = [r.getMessage() for r in caplog.records]
  assert f"cannot pin {directory}/2 (Read-only file system): reading it in place" in messages
  assert (f"checkpoint {directory}/2 was deleted before it could be read (pruned by the run "
          "writing there): picking again") in messages
  assert not [m for m in messages if "damaged" in m], messages


def test_without_hard_links_the_pin_is_a_copy(tmp_path, monkeypatch):
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1, 2])
  writer = Writer(directory)
  read = checkpointing.Checkpointer.restore
  linked = []

  def no_links(source, target):
    linked.append(source)
    raise OSError(errno.EPERM, "Operation not permitted")

  def prune_then_read(self, step, target=None):
    if step == 2 and (directory / "2").exists():
      writer.save(3)
    return read(self, step, target)

  monkeypatch.setattr(os, "link", no_links)
  monkeypatch.setattr(checkpointing.Checkpointer, "restore", prune_then_read)
  restored = restore.load_variables(str(tmp_path))
  writer.close()
  assert linked and restored.step == 2
  np.testing.assert_array_equal(restored.variables["params"]["w"], [2, 2, 2])


def test_unfinished_save_is_not_a_checkpoint_for_readers(tmp_path):
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1])
  # A save in flight: Orbax writes into this folder and renames it when complete.
  shutil.copytree(directory / "1", directory / "2.orbax-checkpoint-tmp-1234")
  assert restore.load_variables(str(tmp_path)).step == 1


def test_pruning_renames_the_step_away_and_the_writer_deletes_it_at_its_next_save(tmp_path):
  directory = tmp_path / "checkpoints"
  writer = Writer(directory)
  writer.save(1)
  writer.save(2)
  # Renamed whole in one step, not deleted file by file under a reader.
  assert step_names(directory) == ["2"] and os.listdir(directory / pins.DELETED) == ["1"]
  writer.save(3)
  assert os.listdir(directory / pins.DELETED) == ["2"]
  # A run killed here leaves .deleted/2: the next one deletes it when it opens the folder.
  shutil.copytree(directory, tmp_path / "killed")
  writer.close()
  assert os.listdir(directory / pins.DELETED) == []
  assert checkpointing.Checkpointer(str(tmp_path / "killed"), read_only=True).steps() == [3]
  assert os.listdir(tmp_path / "killed" / pins.DELETED) == ["2"]  # Readers delete nothing.
  resumed = checkpointing.Checkpointer(str(tmp_path / "killed"), keep=1)
  assert os.listdir(tmp_path / "killed" / pins.DELETED) == []
  resumed.close()


def make_pin(directory, name: str, age_s: float = 0.0, **holder) -> str:
  folder = os.path.join(directory, pins.READERS, name)
  os.makedirs(os.path.join(folder, "1"))
  path = os.path.join(folder, pins.HOLDER)
  with open(path, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getpid(),
               "started": "2020-01-01T00:00:00+00:00", **holder}, f)
  if age_s:
    beat = os.stat(path).st_mtime - age_s
    os.utime(path, (beat, beat))
  return folder


def test_pins_of_readers_that_are_gone_are_removed_and_live_ones_kept(tmp_path):
  from tests.checkpoints.test_workdir import dead_pid
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1])
  # This process: live. Its heartbeat is old (it can have hung), but the pid answers.
  live = make_pin(directory, "live", age_s=2 * pins.STALE_S, started=_now())
  dead = make_pin(directory, "dead", pid=dead_pid())  # Killed here, a second ago.
  # Another host: no pid to check there, only the heartbeat.
  away_fresh = make_pin(directory, "away-fresh", host="elsewhere", age_s=pins.STALE_S / 2)
  away_stale = make_pin(directory, "away-stale", host="elsewhere", age_s=pins.STALE_S + 60)
  assert sorted(pins.remove_stale(str(directory))) == sorted([dead, away_stale])
  assert all(os.path.isdir(p) for p in (live, away_fresh))
  assert not any(os.path.exists(p) for p in (dead, away_stale))
  # A training run opening the folder cleans up the same way.
  make_pin(directory, "dead-again", pid=dead_pid())
  checkpointing.Checkpointer(str(directory), keep=1).close()
  assert sorted(os.listdir(directory / pins.READERS)) == ["away-fresh", "live"]


def _now() -> str:
  import datetime
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def test_a_listing_that_met_only_a_pruned_step_is_made_again(tmp_path, monkeypatch, caplog):
  directory = tmp_path / "checkpoints"
  write_checkpoints(directory, [1])
  best_step = checkpointing.Checkpointer.best_step
  calls = []

  def listed_while_pruned(self):
    """Orbax's first listing found only a step pruned before it read its metadata."""
    calls.append(1)
    return None if len(calls) == 1 else best_step(self)

  monkeypatch.setattr(checkpointing.Checkpointer, "best_step", listed_while_pruned)
  caplog.set_level(logging.INFO)
  assert restore.load_variables(str(tmp_path)).step == 1 and len(calls) == 2
  assert (f"checkpoint {directory} was deleted before it could be read (pruned by the run "
          "writing there): picking again") in [r.getMessage() for r in caplog.records]
  shutil.rmtree(directory / "1")  # Truly empty: said so at once.
  with pytest.raises(UserError, match="holds no checkpoint: train first"):
    restore.load_variables(str(tmp_path))
