"""<workdir>/metrics.jsonl: one JSON object per event, appended, repaired, read back.

`MetricWriter` appends the lines (and mirrors every scalar into TensorBoard
event files under <workdir>/tensorboard/); `repair_tail` removes the torn
last line a killed run can leave; `read_metrics` and `series` read the file
back for the summary and the plots.
"""

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from resnet_jax.errors import UserError
from resnet_jax.reporting import tensorboard

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends one JSON line per event to <workdir>/metrics.jsonl and mirrors it to TensorBoard.

  With `enabled=False` (every process but 0 of a multi-host run) it writes
  nothing at all. TensorBoard tags are those of `tensorboard.tensorboard_tag`.
  Event files are flushed at every write that carries an eval metric, on
  `close`, and otherwise at the first write a minute after the last flush.
  A metrics.jsonl that a killed run left ending mid-line is repaired on
  opening, so that the first record appended is not lost on that line.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(workdir, tensorboard.TENSORBOARD_DIR)
    self._event_file: tensorboard.EventFile | None = None
    if enabled:
      repair_tail(self.path)

  def write(self, step: int, epoch: float, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "epoch": round(float(epoch), 4),
              **{k: float(v) for k, v in metrics.items()}}
    os.makedirs(self.workdir, exist_ok=True)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    # Opened on the first write, so that an idle writer leaves no files.
    if self._event_file is None:
      self._event_file = tensorboard.EventFile(self.tensorboard_dir)
    self._event_file.add_scalars(record["step"], {tensorboard.tensorboard_tag(name): value
                                                  for name, value in record.items()
                                                  if name != "step"})
    if any(name.startswith("eval_") for name in record):
      self._event_file.flush()

  def close(self) -> None:
    if self._event_file is not None:
      self._event_file.close()
    self._event_file = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def repair_tail(path: str) -> None:
  """Makes path end with a whole line: what a run killed mid-write left after its last newline goes.

  A fragment that is a whole record after all (only the newline was lost)
  gets its newline back instead.
  """
  try:
    f = open(path, "rb+")
  except FileNotFoundError:
    return
  with f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    start = max(0, size - (1 << 20))  # A record is far shorter than 1 MiB.
    f.seek(start)
    tail = f.read()
    newline = tail.rfind(b"\n")
    cut = start + newline + 1 if newline >= 0 else 0
    fragment = tail[newline + 1:]
    try:
      whole = isinstance(json.loads(fragment), dict) and b'"step"' in fragment
    except ValueError:
      whole = False
    if whole:
      f.write(b"\n")
      return
    f.truncate(cut)
  logging.warning("%s ended in a torn line (a run killed while writing it): removed it, %r",
                  path, fragment[:120].decode(errors="replace"))


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Every record of <workdir>/metrics.jsonl in file order; a torn line is skipped, warned of."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{workdir} has no {METRICS_FILE}: pass the --workdir of a training run")
  records = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict) or "step" not in record:
        logging.warning("%s line %d is not a metrics record (a run stopped mid-write?): skipped",
                        path, number)
        continue
      records.append(record)
  return records


def series(records: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
  """The records that carry `key`, one per step in step order; the last written wins.

  A resumed run logs again the steps after its checkpoint, so the later
  line is the one that belongs to the run's final history.
  """
  by_step = {}
  for record in records:
    if record.get(key) is not None:
      by_step[int(record["step"])] = record
  return [by_step[step] for step in sorted(by_step)]
