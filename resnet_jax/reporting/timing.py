"""The run's clock, saved with each checkpoint, and time to accuracy read back from metrics.jsonl.

A session is one run of the training command (the first, or a resume). In
metrics.jsonl the first train line of each session carries
`compile_time_s`: the session's first step timed to completion, almost all
of it compilation. Train and eval lines carry `train_time_s`: seconds of
training of the whole run so far, without compile time, evaluation and
checkpoint saves; eval lines carry `wall_time_s`, the run's wall seconds so
far. Both go on from the totals saved with the checkpoint a session resumed
from, so the time an interrupted session spent after its last checkpoint
is not counted (the resumed session does that work again). The eval line
whose accuracy first reaches a target of config.target_accuracies adds
`time_to_<target>_s`, e.g. `time_to_0.94_s`.
"""

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

Records = Sequence[Mapping[str, Any]]


def target_key(target: float) -> str:
  """`0.94` -> `time_to_0.94_s`."""
  return f"time_to_{target:g}_s"


def _last(records: Records, key: str) -> float | None:
  values = [float(r[key]) for r in records
            if r.get(key) is not None and math.isfinite(float(r[key]))]
  return values[-1] if values else None


def total_train_time(records: Records) -> float | None:
  """The run's training seconds: the last `train_time_s` written (each is cumulative)."""
  return _last(records, "train_time_s")


def total_wall_time(records: Records) -> float | None:
  """The run's wall seconds: the last `wall_time_s` written (each is cumulative)."""
  return _last(records, "wall_time_s")


def total_compile_time(records: Records) -> float | None:
  """Seconds of compilation over every session."""
  values = [float(r["compile_time_s"]) for r in records if r.get("compile_time_s") is not None]
  return sum(values) if values else None


def first_reached(records: Records, targets: Sequence[float]) -> dict[float, tuple[float, int]]:
  """target -> (training seconds, step) of the eval line that first reached it, if one did."""
  reached = {}
  for target in targets:
    key = target_key(target)
    hit = next((r for r in records if r.get(key) is not None), None)
    if hit is not None:
      reached[float(target)] = (float(hit[key]), int(hit["step"]))
  return reached


def clock_from_log(records: Records, step: int, targets: Sequence[float]) -> dict[str, Any]:
  """What `TrainClock.state()` would have saved at `step`, rebuilt from the metrics.jsonl lines
  up to it: for a checkpoint written before the clock was saved with it.

  Such runs wrote `wall_time_s` from each session's own start, so a value
  below the one before marks a new session; the wall total adds up the
  sessions' last values.
  """
  upto = [r for r in records if int(r["step"]) <= step]
  walls = [float(r["wall_time_s"]) for r in upto
           if r.get("wall_time_s") is not None and math.isfinite(float(r["wall_time_s"]))]
  wall = sum(a for a, b in zip(walls, walls[1:]) if b < a) + (walls[-1] if walls else 0.0)
  return {"train_time_s": total_train_time(upto) or 0.0, "wall_time_s": wall,
          "targets_reached": sorted(first_reached(upto, targets))}


class TrainClock:
  """The run's training seconds (compile, eval and saves excluded) and wall seconds.

  Like big_vision's `utils.Chrono`, it is state saved with each checkpoint:
  `state()` gives the totals to save, and a resumed session passes them back
  as `saved`, going on from them. `now` reads a monotonic clock in seconds
  (tests pass a fake one). The session's wall time counts from construction,
  its training time from `start()`.
  """

  def __init__(self, targets: Sequence[float], saved: Mapping[str, Any] | None = None,
               now: Callable[[], float] = time.monotonic):
    saved = saved or {}
    self.targets = tuple(float(t) for t in targets)
    self.earlier_s = float(saved.get("train_time_s", 0.0))
    self.earlier_wall_s = float(saved.get("wall_time_s", 0.0))
    self.reached = {float(t) for t in saved.get("targets_reached", ())}
    self.compile_time_s: float | None = None
    self._compile_written = False
    self._excluded_s = 0.0
    self._paused_at: float | None = None
    self._now = now
    self._session_start = self._start = now()

  def start(self) -> None:
    """Marks the start of the session's first step."""
    self._start = self._now()

  def first_step_done(self, outputs: Any) -> None:
    """Waits for the first step's outputs: the time so far is its compilation."""
    import jax  # Lazy: the reporting package reads metrics back without JAX.
    jax.block_until_ready(outputs)
    self.compile_time_s = self._now() - self._start

  def train_time_s(self) -> float:
    # Inside a pause, the time stands where the pause began.
    until = self._paused_at if self._paused_at is not None else self._now()
    return (self.earlier_s + until - self._start - (self.compile_time_s or 0.0)
            - self._excluded_s)

  def wall_time_s(self) -> float:
    return self.earlier_wall_s + self._now() - self._session_start

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside (evaluation, saving) does not count as training."""
    self._paused_at = self._now()
    try:
      yield
    finally:
      self._excluded_s += self._now() - self._paused_at
      self._paused_at = None

  def state(self) -> dict[str, Any]:
    """What a checkpoint saves: the totals now and the targets reached so far (JSON)."""
    return {"train_time_s": self.train_time_s(), "wall_time_s": self.wall_time_s(),
            "targets_reached": sorted(self.reached)}

  def train_fields(self) -> dict[str, float]:
    """For a train line: train_time_s, and compile_time_s on the session's first."""
    fields = {"train_time_s": self.train_time_s()}
    if self.compile_time_s is not None and not self._compile_written:
      fields["compile_time_s"] = self.compile_time_s
      self._compile_written = True
    return fields

  def eval_fields(self, accuracy: float) -> dict[str, float]:
    """For an eval line: train_time_s, wall_time_s, and time_to_<target>_s for each target
    first reached now."""
    now = self.train_time_s()
    fields = {"train_time_s": now, "wall_time_s": self.wall_time_s()}
    for target in self.targets:
      if target not in self.reached and accuracy >= target:
        self.reached.add(target)
        fields[target_key(target)] = now
    return fields
