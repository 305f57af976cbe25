"""SIGTERM and SIGINT as a request to save and stop, checked by the loop once per step.

What a run does when signalled (one process):

  first SIGTERM or SIGINT   during set-up: stops once the set-up step under way
                            (loading, compiling) is done, saving nothing, exit
                            143 (SIGTERM) or 130 (SIGINT). While training:
                            finishes the step, saves it, exits 143 or 130.
  more SIGTERMs             logged and ignored: the save under way completes
                            (schedulers such as SLURM may signal more than once).
  second SIGINT             logged: one more aborts.
  third SIGINT (Ctrl-C x3)  aborts without saving (exit 130); a save under way
                            is left unfinished, which never harms the complete
                            checkpoints before it, and the next run deletes it.

A signal arriving while XLA compiles takes effect when the compiler returns.
"""

import signal
import threading

from absl import logging

ABORT_AFTER_INTERRUPTS = 3
# Set once a run aborts: the console filter (cli) then keeps libraries'
# complaints about the save given up off the console.
aborting = False


class Aborted(KeyboardInterrupt):
  """Ctrl-C pressed ABORT_AFTER_INTERRUPTS times: stop at once, without saving (exit 130)."""


class StopRequested:
  """Turns SIGTERM/SIGINT into a stop that the loop checks once per step.

  A context manager, re-entrant: the handlers are installed on the first
  entry and restored on the last exit, so that one object can cover a run's
  set-up and its loop. `phase` ("set-up" or "training") only changes what
  the first signal's log line promises.

  With several processes all must stop, and save, at the same step, or each
  waits in Orbax's save for the others forever. There SIGTERM, sent to any of
  them, is left to jax.distributed's preemption notifier, which agrees on the
  step; SIGINT keeps Python's default and ends the run without a save.
  """

  def __init__(self):
    self.signal_name = None
    self.phase = "set-up"
    self.interrupts = 0
    self._previous = {}
    self._depth = 0
    import jax  # Lazy: the command line imports this module for `Aborted` alone.
    self._agreed = jax.process_count() > 1

  def __enter__(self) -> "StopRequested":
    self._depth += 1
    if (self._depth == 1 and threading.current_thread() is threading.main_thread()
        and not self._agreed):
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    name = signal.Signals(signum).name
    if name == "SIGINT":
      self.interrupts += 1
      if self.interrupts >= ABORT_AFTER_INTERRUPTS:
        global aborting
        aborting = True
        raise Aborted()
    if self.signal_name is None:
      self.signal_name = name
      if self.phase == "training":
        logging.warning("%s received: saving a checkpoint at the current step, then exiting",
                        name)
      else:
        logging.warning("%s received during set-up: stopping before training starts, without "
                        "saving", name)
    elif name == "SIGINT":
      left = ABORT_AFTER_INTERRUPTS - self.interrupts
      logging.warning("SIGINT received again: still stopping; press Ctrl-C %d more time%s to "
                      "abort without saving (the last complete checkpoint stays intact)", left,
                      "s" if left > 1 else "")
    else:
      logging.warning("%s received again: ignored, the run is already stopping (it exits once "
                      "the checkpoint under way is saved)", name)

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
    self._depth -= 1
    if self._depth == 0:
      for sig, handler in self._previous.items():
        signal.signal(sig, handler)
      self._previous = {}
