"""Time to accuracy: compile time apart, training time alone, the first reach of each target.

A session is one run of the training command (the first, or a resume). In
metrics.jsonl the first train line of each session carries
`compile_time_s`: the session's first step timed to completion, almost all
of it compilation. Train and eval lines carry `train_time_s`: seconds of
training of the whole run so far (earlier sessions included, steps re-done
after a resume too), without compile time, evaluation and checkpoint saves.
The eval line whose accuracy first reaches a target of
config.target_accuracies adds `time_to_<target>_s`, e.g. `time_to_0.94_s`.
"""

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Records = Sequence[Mapping[str, Any]]


def target_key(target: float) -> str:
  """`0.94` -> `time_to_0.94_s`."""
  return f"time_to_{target:g}_s"


def total_train_time(records: Records) -> float | None:
  """The run's training seconds: the last `train_time_s` written (each is cumulative)."""
  values = [float(r["train_time_s"]) for r in records if r.get("train_time_s") is not None]
  return values[-1] if values else None


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


class TrainClock:
  """Training seconds of a run: this session's (compile, eval, saves excluded) after earlier ones."""

  def __init__(self, targets: Sequence[float], earlier: Records = ()):
    self.targets = tuple(float(t) for t in targets)
    self.earlier_s = total_train_time(earlier) or 0.0
    self.reached = set(first_reached(earlier, self.targets))
    self.compile_time_s: float | None = None
    self._compile_written = False
    self._excluded_s = 0.0
    self._start = time.monotonic()

  def start(self) -> None:
    """Marks the start of the session's first step."""
    self._start = time.monotonic()

  def first_step_done(self, outputs: Any) -> None:
    """Waits for the first step's outputs: the time so far is its compilation."""
    import jax  # Lazy: reading metrics.jsonl back needs no JAX.
    jax.block_until_ready(outputs)
    self.compile_time_s = time.monotonic() - self._start

  def train_time_s(self) -> float:
    session = time.monotonic() - self._start - (self.compile_time_s or 0.0) - self._excluded_s
    return self.earlier_s + session

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside (evaluation) does not count as training."""
    begin = time.monotonic()
    try:
      yield
    finally:
      self._excluded_s += time.monotonic() - begin

  def train_fields(self) -> dict[str, float]:
    """For a train line: train_time_s, and compile_time_s on the session's first."""
    fields = {"train_time_s": self.train_time_s()}
    if self.compile_time_s is not None and not self._compile_written:
      fields["compile_time_s"] = self.compile_time_s
      self._compile_written = True
    return fields

  def eval_fields(self, accuracy: float) -> dict[str, float]:
    """For an eval line: train_time_s, and time_to_<target>_s for each target first reached now."""
    now = self.train_time_s()
    fields = {"train_time_s": now}
    for target in self.targets:
      if target not in self.reached and accuracy >= target:
        self.reached.add(target)
        fields[target_key(target)] = now
    return fields
