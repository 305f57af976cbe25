"""What the run lock (workdir.py) and the readers' pins (pins.py) share: atomic JSON files
naming a process, and whether that process still runs.

A leaf of the package: it imports nothing of resnet_jax.
"""

import datetime
import json
import os
import socket
from typing import Any


def slurm_job() -> dict:
  """This process's SLURM job ID and restart count, when SLURM started it."""
  if "SLURM_JOB_ID" not in os.environ:
    return {}
  return {"slurm_job_id": os.environ["SLURM_JOB_ID"],
          "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


def holder_alive(holder: dict) -> bool | None:
  """Whether the holder's process runs; None where this host cannot tell (another host)."""
  mine = slurm_job()
  # A requeued job (`--requeue`, after a node failure) keeps its ID and counts its
  # restarts: its earlier start, on whatever node, has ended.
  if (mine and holder.get("slurm_job_id") == mine["slurm_job_id"]
      and isinstance(holder.get("slurm_restart_count"), int)
      and holder["slurm_restart_count"] < mine["slurm_restart_count"]):
    return False
  pid = holder.get("pid")
  if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    pass
  stat = _proc_stat(pid)
  if stat is None:
    return True
  state, began = stat
  if state == "Z":  # Ended, not yet reaped by its parent.
    return False
  try:
    started = datetime.datetime.fromisoformat(holder["started"]).timestamp()
  except (KeyError, TypeError, ValueError):
    return True
  # The pid was reused: a process that began after the lock was written is another one.
  return began <= started + 2


def _proc_stat(pid: int) -> tuple[str, float] | None:
  """(state, start time in seconds since the epoch) of a process from /proc; None without /proc."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    return fields[0], boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
  except (OSError, IndexError, ValueError, StopIteration):
    return None



def write_json(path: str, value: Any) -> None:
  """Writes JSON so that a reader never sees half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)
