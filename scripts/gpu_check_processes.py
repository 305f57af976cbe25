"""Child processes of scripts/gpu_check.py: a command run with a time limit, and killed whole.

A section's child starts the project's programs, which start their own
(benchmark.py's PyTorch child and the stream's decoding workers, some in
sessions of their own), so a limit kills the whole tree found under /proc,
not one process group.
"""

import collections
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def process_tree(root: int) -> list[int]:
  """root and every live process below it (from /proc), parents first."""
  children = collections.defaultdict(list)
  for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
    try:
      with open(f"/proc/{entry}/stat") as f:
        children[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
    except (OSError, ValueError, IndexError):
      continue  # Not a process, or gone meanwhile.
  tree, todo = [], [root]
  while todo:
    pid = todo.pop()
    tree.append(pid)
    todo.extend(children.get(pid, ()))
  return tree


def kill_tree(pid: int) -> None:
  """SIGKILLs pid and its descendants, all found before any dies (orphans escape the walk)."""
  for each in process_tree(pid):
    try:
      os.kill(each, signal.SIGKILL)
    except ProcessLookupError:
      pass


def child_env(extra: dict | None = None) -> dict:
  """The environment of a child: the repository importable, output unbuffered."""
  path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
  return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(extra or {})}


@dataclasses.dataclass
class Finished:
  returncode: int | None
  stdout: str
  stderr: str
  timed_out: bool
  seconds: float

  def check(self, what: str) -> None:
    """Raises with the last lines of the output unless the command succeeded."""
    if self.timed_out:
      raise TimeoutError(f"{what} stopped at its limit, after {self.seconds:.0f} s")
    if self.returncode:
      lines = [line for line in (self.stderr or self.stdout).splitlines() if line.strip()]
      raise RuntimeError(f"{what} exited with status {self.returncode}: "
                         + " | ".join(lines[-3:]))


def run(command: Sequence[str], timeout_s: float) -> Finished:
  """Runs command from the repository root; its output is kept and copied to this log."""
  start = time.monotonic()
  print("$", " ".join(command), flush=True)
  child = subprocess.Popen(command, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
  timed_out = False
  try:
    stdout, stderr = child.communicate(timeout=max(timeout_s, 1.0))
  except subprocess.TimeoutExpired:
    kill_tree(child.pid)
    timed_out = True
    try:
      stdout, stderr = child.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # An escaped grandchild still holds the pipes.
      stdout = stderr = ""
  print(stdout, stderr, sep="\n", flush=True)
  return Finished(child.returncode, stdout, stderr, timed_out, time.monotonic() - start)
