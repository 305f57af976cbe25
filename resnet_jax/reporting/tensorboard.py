"""Scalars into TensorBoard event files, each on disk once flushed.

A metric `train_<name>` is tagged `train/<name>`, `eval_<name>` is tagged
`eval/<name>`, any other keeps its name (`epoch`, `learning_rate`), so that
TensorBoard groups the curves by where they were measured.
"""

import itertools
import os
import time
from collections.abc import Callable, Mapping

TENSORBOARD_DIR = "tensorboard"  # Under the workdir.
FLUSH_EVERY_SECONDS = 60.0
_GROUPS = ("train_", "eval_")
_event_file_counter = itertools.count()


def tensorboard_tag(name: str) -> str:
  """The TensorBoard tag of a metric: `train_loss` -> `train/loss`, other names unchanged."""
  for prefix in _GROUPS:
    if name.startswith(prefix) and len(name) > len(prefix):
      return f"{prefix[:-1]}/{name[len(prefix):]}"
  return name


class EventFile:
  """Scalars into one TensorBoard event file, written in the caller's thread.

  This uses tensorboardX's EventsWriter and event protos, not its public
  SummaryWriter, for one reason: SummaryWriter hands events to a writer
  thread, and none of its public calls but close() waits for that thread's
  queue. With tensorboardX 2.6.5, `add_scalar` then `flush()` returned before
  the scalar was in the file in 50 of 50 tries, so an eval point could sit
  unwritten while TensorBoard reads the file, or be lost with a killed run.
  EventsWriter writes each event as it comes, and its flush() puts all of them
  on disk. Flushed by the caller, and by itself at the first write a minute
  after the last flush (by `now`, a monotonic clock in seconds).
  """

  def __init__(self, logdir: str, now: Callable[[], float] = time.monotonic):
    # Imported here, not with the module: importing tensorboardX imports PyTorch where it is
    # installed (4.5 s here, by `python -X importtime`), which eval, predict and plot never need.
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    # A unique suffix: two writers opened in the same second would share a name and truncate.
    suffix = f".{os.getpid()}.{next(_event_file_counter)}"
    self._writer = EventsWriter(os.path.join(logdir, "events"), filename_suffix=suffix)
    self._now = now
    self._last_flush = now()

  def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One event at `step` holding every tag -> value of scalars."""
    values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
    self._writer.write_event(self._event(wall_time=time.time(), step=step,
                                         summary=self._summary(value=values)))
    if self._now() - self._last_flush > FLUSH_EVERY_SECONDS:
      self.flush()

  def flush(self) -> None:
    self._writer.flush()
    self._last_flush = self._now()

  def close(self) -> None:
    self._writer.close()
