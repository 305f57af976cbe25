"""Tests for resnet_jax.workdir's run lock (reading a workdir a run prunes: test_pins.py).

The lock's behaviour in the real command (a second run refused, a dead run's
lock taken over) is tested in test_faults.py; here are its rules one by one,
and a multi-process run refused as one.
"""

import datetime
import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from resnet_jax.checkpoints import workdir as workdirs
from resnet_jax.errors import UserError
from tests import processes
from tests.conftest import tiny_config


def write_lock(workdir, **holder) -> dict:
  holder = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": "2020-01-01T00:00:00+00:00", **holder}
  (workdir / workdirs.LOCK_FILE).write_text(json.dumps(holder))
  return holder


def dead_pid() -> int:
  """The pid of a process that has ended (and been reaped)."""
  return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True).stdout)


def in_use(workdir, holder: dict) -> str:
  return (f"workdir {workdir} is in use by another run (pid {holder['pid']} on host "
          f"{holder['host']}, since {holder['started']}): wait for it to end or stop it, or "
          f"pass another --workdir; if that run is no longer running (its node crashed), "
          f"delete {workdir / workdirs.LOCK_FILE} and rerun")


def test_lock_names_its_holder_refuses_a_second_run_and_is_released(tmp_path):
  lock = workdirs.acquire_lock(str(tmp_path))
  holder = json.loads((tmp_path / workdirs.LOCK_FILE).read_text())
  assert holder == lock.holder
  assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
  started = datetime.datetime.fromisoformat(holder["started"])
  assert abs(started.timestamp() - datetime.datetime.now().timestamp()) < 60
  assert os.listdir(tmp_path) == [workdirs.LOCK_FILE]  # No temporary file left.

  for take in (workdirs.acquire_lock, workdirs.refuse_if_in_use,
               lambda path: workdirs.check(path, tiny_config())):  # The early check writes nothing.
    with pytest.raises(UserError) as refused:
      take(str(tmp_path))
    assert str(refused.value) == in_use(tmp_path, holder)
  lock.release()
  assert os.listdir(tmp_path) == []
  workdirs.acquire_lock(str(tmp_path)).release()


def test_dead_runs_lock_is_taken_over_and_others_are_not(tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.WARNING)
  path = tmp_path / workdirs.LOCK_FILE
  # Same host: a pid that has ended, or one reused by a process begun after the lock.
  for dead in ({"pid": dead_pid()}, {"started": "2000-01-01T00:00:00+00:00"}):
    holder = write_lock(tmp_path, **dead)
    caplog.clear()
    lock = workdirs.acquire_lock(str(tmp_path))
    assert lock.holder["pid"] == os.getpid() and lock.holder["started"] != holder["started"]
    assert [r.getMessage() for r in caplog.records] == [
        f"took over the lock {path} of a run that is no longer running (pid {holder['pid']} on "
        f"host {holder['host']}, since {holder['started']})"]
    lock.release()

  # Another host's run cannot be seen from here: refused, its lock left alone.
  holder = write_lock(tmp_path, host="other-node", pid=dead_pid())
  with pytest.raises(UserError) as refused:
    workdirs.acquire_lock(str(tmp_path))
  assert str(refused.value) == in_use(tmp_path, holder)
  assert json.loads(path.read_text()) == holder

  # Unless it is this SLURM job's earlier start, requeued after its node failed.
  holder = write_lock(tmp_path, host="other-node", slurm_job_id="42", slurm_restart_count=0)
  with monkeypatch.context() as env:
    env.setenv("SLURM_JOB_ID", "42")
    env.setenv("SLURM_RESTART_COUNT", "0")  # The same start, or the same job twice: refused.
    with pytest.raises(UserError, match="is in use by another run"):
      workdirs.acquire_lock(str(tmp_path))
    env.setenv("SLURM_RESTART_COUNT", "1")
    lock = workdirs.acquire_lock(str(tmp_path))
    assert (lock.holder["slurm_job_id"], lock.holder["slurm_restart_count"]) == ("42", 1)
    lock.release()

  path.write_text('{"host": "nod')  # Unreadable: said so, with the way out.
  with pytest.raises(UserError, match=rf"^workdir {tmp_path} holds a lock that cannot be read "
                                      rf"\({path}\): if no run uses this workdir, delete it"):
    workdirs.acquire_lock(str(tmp_path))


def test_release_leaves_a_lock_that_is_no_longer_this_runs(tmp_path):
  lock = workdirs.acquire_lock(str(tmp_path))
  os.remove(tmp_path / workdirs.LOCK_FILE)  # Cleared by hand, then taken by another run.
  holder = write_lock(tmp_path, pid=1)
  lock.release()
  assert json.loads((tmp_path / workdirs.LOCK_FILE).read_text()) == holder


def test_multi_process_run_refuses_together_without_hanging(tmp_path):
  workdir, data = tmp_path / "run", tmp_path / "data"
  workdir.mkdir()
  holder = write_lock(workdir, started=datetime.datetime.now().astimezone().isoformat())
  run = processes.Run(processes=2)
  procs = processes.start(str(workdir), str(data), run, str(tmp_path / "log"))
  logs = [str(tmp_path / f"log.{i}.log") for i in range(2)]
  processes.wait_all(procs, logs, timeout_s=240, expected=[2, 2])
  for log in logs:  # Process 0 judged the lock; process 1 learnt its judgement.
    lines = open(log).read().strip().split("\n")
    assert lines[-1] == f"error: {in_use(workdir, holder)}", lines[-5:]
  assert json.loads((workdir / workdirs.LOCK_FILE).read_text()) == holder
  assert os.listdir(workdir) == [workdirs.LOCK_FILE]
