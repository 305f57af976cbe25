"""Waits on conditions, not on time: the handshakes of tests/slow_main.py and of test readers.

A wait here ends when something happens (a file appears, a folder goes), with
a deadline only so that a broken run fails the test instead of hanging it.
"""

import contextlib
import os
import sys
import time
from collections.abc import Callable

DEADLINE_S = 300.0
POLL_S = 0.01  # How often a condition is looked at; no outcome depends on it.


def marker(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def wait_until(condition: Callable[[], bool], what: str, alive: Callable[[], bool] = lambda: True,
               deadline_s: float = DEADLINE_S, describe: Callable[[], str] = lambda: "") -> None:
  """Returns once condition() holds; AssertionError if alive() turns false or at the deadline."""
  deadline = time.monotonic() + deadline_s
  while not condition():
    assert alive(), f"gone while waiting for {what}\n{describe()}"
    assert time.monotonic() < deadline, f"no {what} after {deadline_s:.0f} s\n{describe()}"
    time.sleep(POLL_S)


def wait_for_file(path: str) -> None:
  """Waits (without a deadline: a held run waits for its test, or for its kill) for path."""
  while not os.path.exists(path):
    time.sleep(POLL_S)


def held_pin(pinned, how: str, release: str | None):
  """pins.pinned, holding each pin once made: until the step is pruned, or until release exists."""
  @contextlib.contextmanager
  def holding(directory: str, step: int):
    with pinned(directory, step) as root:
      marker(f"held: pinned step {step}")
      if how == "pruned":
        wait_until(lambda: not os.path.exists(os.path.join(directory, str(step))),
                   f"the pruning of step {step}")
      else:
        wait_for_file(release)
      marker(f"released: pinned step {step}")
      yield root

  return holding
