"""Where metrics go, and what a finished run amounts to.

`MetricsBuffer` keeps step metrics on device until a log interval and reads
them in one transfer. `MetricWriter` appends one JSON object per event to <workdir>/metrics.jsonl
and mirrors every scalar into TensorBoard event files under
<workdir>/tensorboard/. `summarize_run` and `format_summary` read
metrics.jsonl back into the table the trainer prints at the end of a run.
"""

import itertools
import json
import math
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from resnet_jax.reporting import timing
from resnet_jax.errors import NonFiniteLossError, UserError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
FLUSH_EVERY_SECONDS = 60.0
_GROUPS = ("train_", "eval_")
_warned_without_tensorboardx = False
_event_file_counter = itertools.count()


def tensorboard_tag(name: str) -> str:
  """The TensorBoard tag of a metric: `train_loss` -> `train/loss`, other names unchanged."""
  for prefix in _GROUPS:
    if name.startswith(prefix) and len(name) > len(prefix):
      return f"{prefix[:-1]}/{name[len(prefix):]}"
  return name


class _EventFile:
  """Scalars into one TensorBoard event file, written in the caller's thread.

  tensorboardX's SummaryWriter hands events to a background thread, and its
  flush() does not wait for that thread's queue, so an eval point could sit
  unwritten (or die with the process); its EventsWriter, used here directly,
  writes each event as it comes and flush() puts all of them on disk.
  """

  def __init__(self, logdir: str):
    # Imported on first write, not with this module: tensorboardX pulls in torch where installed.
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto import event_pb2, summary_pb2
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    os.makedirs(logdir, exist_ok=True)
    # A unique suffix: two writers opened in the same second would share a name and truncate.
    suffix = f".{os.getpid()}.{next(_event_file_counter)}"
    self._writer = EventsWriter(os.path.join(logdir, "events"), filename_suffix=suffix)
    self._last_flush = time.monotonic()

  def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
    self._writer.write_event(self._event(wall_time=time.time(), step=step,
                                         summary=self._summary(value=values)))
    if time.monotonic() - self._last_flush > FLUSH_EVERY_SECONDS:
      self.flush()

  def flush(self) -> None:
    self._writer.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    self._writer.close()


def _open_event_file(logdir: str) -> _EventFile | None:
  """An event file in logdir, or None (warned once per process) without tensorboardX."""
  global _warned_without_tensorboardx
  try:
    return _EventFile(logdir)
  except ImportError:
    if not _warned_without_tensorboardx:
      logging.warning("tensorboardX is not installed: metrics go to metrics.jsonl only "
                      "(pip install tensorboardX for TensorBoard curves)")
      _warned_without_tensorboardx = True
    return None


class MetricsBuffer:
  """Step metrics held on device between log intervals, then read at once.

  The loop never waits on the device between reads: `append` keeps the
  step's metrics as device arrays; `read` transfers all of them (one sync),
  checks every loss for NaN/Inf and returns their means with the rate of
  images per second since the previous read.
  """

  def __init__(self, batch_size: int, start_step: int):
    self.batch_size = batch_size
    self._pending: list[Mapping[str, Any]] = []
    self._since_time, self._since_step = time.time(), start_step

  def append(self, metrics: Mapping[str, Any]) -> None:
    self._pending.append(metrics)

  def __len__(self) -> int:
    return len(self._pending)

  def read(self, step: int) -> dict[str, float] | None:
    """Means over the steps up to `step` since the last read; None when there were none.

    Raises NonFiniteLossError naming the first step whose loss is NaN or Inf.
    """
    if not self._pending:
      return None
    import jax  # Lazy: reading metrics.jsonl back needs no JAX.
    values, self._pending = jax.device_get(self._pending), []
    first = step - len(values) + 1
    for offset, record in enumerate(values):
      if not math.isfinite(float(record["train_loss"])):
        raise NonFiniteLossError(f"loss became {float(record['train_loss'])} at step {first + offset}")
    now = time.time()
    means = {k: float(np.mean([r[k] for r in values])) for k in values[-1] if k != "learning_rate"}
    means["learning_rate"] = float(values[-1]["learning_rate"])
    means["images_per_second"] = ((step - self._since_step) * self.batch_size
                                  / max(now - self._since_time, 1e-9))
    self._since_time, self._since_step = now, step
    return means


class MetricWriter:
  """Appends one JSON line per event to <workdir>/metrics.jsonl and mirrors it to TensorBoard.

  With `enabled=False` (every process but 0 of a multi-host run) it writes
  nothing at all. TensorBoard tags are `train/<name>` for `train_<name>`,
  `eval/<name>` for `eval_<name>`, and the metric name otherwise (`epoch` too).
  Event files are flushed at every write that carries an eval metric, on
  `close`, and otherwise at the first write a minute after the last flush.
  A metrics.jsonl that a killed run left ending mid-line is repaired on
  opening, so that the first record appended is not lost on that line.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
    self._event_file = None
    self._event_file_tried = False
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
    event_file = self._tensorboard()
    if event_file is None:
      return
    event_file.add_scalars(record["step"], {tensorboard_tag(name): value
                                            for name, value in record.items() if name != "step"})
    if any(name.startswith("eval_") for name in record):
      event_file.flush()

  def _tensorboard(self) -> _EventFile | None:
    """The event file, opened on the first write so that an idle writer leaves no files."""
    if not self._event_file_tried:
      self._event_file_tried = True
      self._event_file = _open_event_file(self.tensorboard_dir)
    return self._event_file

  def close(self) -> None:
    if self._event_file is not None:
      self._event_file.close()
    self._event_file, self._event_file_tried = None, False

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
  """Every record of <workdir>/metrics.jsonl in file order; a torn line is skipped with a warning."""
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


def _read_config(workdir: str) -> dict[str, Any]:
  """The run's config.json, or {} where it is missing or unreadable (the summary goes on without)."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, json.JSONDecodeError) as e:
    logging.warning("%s cannot be read (%s): summary without model and dataset", path, e)
    return {}
  return config if isinstance(config, dict) else {}


def _total_wall_time(records: Sequence[Mapping[str, Any]]) -> float | None:
  """Seconds of training over all sessions of a run.

  Each session (the first run and every resume) counts `wall_time_s` from
  its own start, so a value smaller than the one before marks a new
  session; the total is the sum of each session's last value.
  """
  values = [float(r["wall_time_s"]) for r in records
            if r.get("wall_time_s") is not None and math.isfinite(float(r["wall_time_s"]))]
  if not values:
    return None
  total = 0.0
  for previous, value in zip(values, values[1:]):
    if value < previous:
      total += previous
  return total + values[-1]


def summarize_run(workdir: str, final_step: int | None = None,
                  best_step: int | None = None) -> dict[str, Any]:
  """The facts of a run from its metrics.jsonl and config.json; absent facts are None.

  Given the run's final step and its best checkpoint's step (what the
  trainer ends with), the final and best evals are those of these steps,
  so that the summary agrees with the checkpoints; evals logged past the
  final step (by a longer run that a resume cut back) do not count.

  Keys: workdir, model, dataset, num_epochs, steps_completed,
  epochs_completed, num_evals, final_eval_step, final_eval_accuracy,
  final_eval_loss, best_eval_step, best_eval_accuracy, wall_time_s,
  mean_images_per_second, compile_time_s, train_time_s (compile, eval and
  saves excluded) and time_to ({target: (train seconds, step)} for each of the
  config's target_accuracies reached). Accuracies are fractions in [0, 1];
  the best is the earliest step with the highest eval accuracy.
  """
  records = read_metrics(workdir)
  config = _read_config(workdir)
  evals = [r for r in series(records, "eval_accuracy") if math.isfinite(float(r["eval_accuracy"]))]
  if final_step is not None:
    evals = [r for r in evals if int(r["step"]) <= final_step]
  final = evals[-1] if evals else None
  best = max(evals, key=lambda r: float(r["eval_accuracy"])) if evals else None
  at_best = [r for r in evals if int(r["step"]) == best_step]
  best = at_best[0] if at_best else best
  speeds = [float(r["images_per_second"]) for r in series(records, "images_per_second")
            if math.isfinite(float(r["images_per_second"]))]
  return {
      "workdir": workdir,
      "model": config.get("model"),
      "dataset": config.get("dataset"),
      "num_epochs": config.get("num_epochs"),
      "steps_completed": max((int(r["step"]) for r in records), default=0),
      "epochs_completed": max((float(r.get("epoch", 0.0)) for r in records), default=0.0),
      "num_evals": len(evals),
      "final_eval_step": int(final["step"]) if final else None,
      "final_eval_accuracy": float(final["eval_accuracy"]) if final else None,
      "final_eval_loss": float(final["eval_loss"]) if final and "eval_loss" in final else None,
      "best_eval_step": int(best["step"]) if best else None,
      "best_eval_accuracy": float(best["eval_accuracy"]) if best else None,
      "wall_time_s": _total_wall_time(records),
      "mean_images_per_second": sum(speeds) / len(speeds) if speeds else None,
      "compile_time_s": timing.total_compile_time(records),
      "train_time_s": timing.total_train_time(records),
      "targets": [float(t) for t in config.get("target_accuracies") or ()],
      "time_to": timing.first_reached(records, config.get("target_accuracies") or ()),
  }


def format_duration(seconds: float) -> str:
  """`3723.4` -> `1h 02m 03s`; under a minute, `12.3s`."""
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def format_summary(summary: Mapping[str, Any], best_checkpoint_path: str | None, workdir: str) -> str:
  """The end-of-run table, then how to evaluate the run and how to fine-tune from it.

  Args:
    summary: what `summarize_run` returned.
    best_checkpoint_path: the best checkpoint's directory; None, "" or
      "none" where the run saved none.
    workdir: the run directory, as the user should type it in the hints.
  """
  what = " on ".join(str(summary[k]) for k in ("model", "dataset") if summary.get(k))
  title = f"Run summary: {what} ({workdir})" if what else f"Run summary ({workdir})"
  epochs = f"{summary['epochs_completed']:.2f}"
  if summary.get("num_epochs"):
    epochs += f" of {summary['num_epochs']:g}"
  if summary.get("final_eval_accuracy") is None:
    final_row = best_row = "- (no evaluation in metrics.jsonl)"
  else:
    loss = summary.get("final_eval_loss")
    final_row = (f"{100 * summary['final_eval_accuracy']:.2f}%  (step {summary['final_eval_step']:,}"
                 + (f", loss {loss:.4f})" if loss is not None else ")"))
    best_row = f"{100 * summary['best_eval_accuracy']:.2f}%  (step {summary['best_eval_step']:,})"
  has_checkpoint = best_checkpoint_path and best_checkpoint_path != "none"
  wall_time, speed = summary.get("wall_time_s"), summary.get("mean_images_per_second")
  rows = [
      ("epochs completed", epochs),
      ("steps", f"{summary['steps_completed']:,}"),
      ("final eval accuracy", final_row),
      ("best eval accuracy", best_row),
      ("best checkpoint", best_checkpoint_path if has_checkpoint else "- (none saved)"),
      ("wall time", format_duration(wall_time) if wall_time is not None else "- (not logged)"),
      ("mean images/s", f"{speed:,.0f}" if speed is not None else "- (no train lines)"),
  ]
  if summary.get("train_time_s") is not None:
    compile_s = summary.get("compile_time_s")
    rows.append(("training time", format_duration(summary["train_time_s"])
                 + "  (compile, eval and saves excluded"
                 + (f"; compile {format_duration(compile_s)})" if compile_s is not None else ")")))
  for target in summary.get("targets") or ():
    reached = (summary.get("time_to") or {}).get(target)
    rows.append((f"time to {100 * target:g}%",
                 f"{format_duration(reached[0])}  (step {reached[1]:,})" if reached
                 else "- (not reached)"))
  width = max(len(label) for label, _ in rows)
  lines = [title] + [f"  {label:<{width}}  {value}" for label, value in rows]
  quoted = shlex.quote(workdir)
  lines.append(f"Evaluate:  python -m resnet_jax.main --workdir={quoted} --mode=eval")
  lines.append(f"Fine-tune: python -m resnet_jax.main --config=configs/finetune.py "
               f"--config.init_checkpoint={quoted} --workdir=NEW_WORKDIR")
  return "\n".join(lines)
