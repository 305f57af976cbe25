"""SIGTERM and SIGINT as a request to save and stop, checked by the loop once per step."""

import signal
import threading

import jax
from absl import logging


class StopRequested:
  """Turns SIGTERM/SIGINT into a stop that the loop checks once per step.

  With several processes all must stop, and save, at the same step, or each
  waits in Orbax's save for the others forever. There SIGTERM, sent to any of
  them, is left to jax.distributed's preemption notifier, which agrees on the
  step; SIGINT keeps Python's default and ends the run without a save.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    self._agreed = jax.process_count() > 1

  def __enter__(self) -> "StopRequested":
    if threading.current_thread() is threading.main_thread() and not self._agreed:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signal_name is not None:  # A second signal: stop at once.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint at the current step, then exiting",
                    self.signal_name)

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`; every process must ask at every step."""
    if self._agreed and self.signal_name is None:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "SIGTERM"
        logging.warning("SIGTERM received by a process of this run: saving a checkpoint at "
                        "step %d, then exiting", step)
    return self.signal_name is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
