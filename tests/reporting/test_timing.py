"""Tests for resnet_jax.reporting.timing: the run's clock, its saved state, time to accuracy.

A fake clock stands in for time.monotonic: each test sets the seconds that
pass between calls, so no test waits or depends on the machine's speed.
"""

import json

import numpy as np
import pytest

from resnet_jax.reporting import timing


class FakeClock:
  """A monotonic clock that moves only when told to."""

  def __init__(self, seconds: float = 1000.0):
    self.seconds = seconds

  def __call__(self) -> float:
    return self.seconds

  def advance(self, seconds: float) -> None:
    self.seconds += seconds


def session(clock: FakeClock, saved=None, targets=(), setup_s=0.0, compile_s=5.0):
  """A TrainClock through set-up and a first step that took compile_s."""
  train = timing.TrainClock(targets, saved, now=clock)
  clock.advance(setup_s)
  train.start()
  clock.advance(compile_s)
  train.first_step_done(np.zeros(()))
  return train


def test_training_time_leaves_out_compilation_evaluation_and_saves():
  clock = FakeClock()
  train = session(clock, setup_s=3.0, compile_s=5.0)
  assert train.compile_time_s == 5.0
  clock.advance(10.0)
  with train.paused():  # An evaluation.
    clock.advance(7.0)
    assert train.train_time_s() == 10.0  # Stands still inside the pause.
  clock.advance(2.0)
  assert train.train_time_s() == 12.0
  assert train.wall_time_s() == 3.0 + 5.0 + 10.0 + 7.0 + 2.0  # From construction, all of it.
  assert train.train_fields() == {"train_time_s": 12.0, "compile_time_s": 5.0}
  assert train.train_fields() == {"train_time_s": 12.0}  # compile_time_s on the first line only.


def test_a_resumed_clock_goes_on_from_the_saved_totals_not_from_where_the_last_session_stopped():
  clock = FakeClock()
  first = session(clock, targets=(0.5, 0.9))
  clock.advance(20.0)
  assert first.eval_fields(0.6)["time_to_0.5_s"] == 20.0
  with first.paused():  # A checkpoint save.
    saved = json.loads(json.dumps(first.state()))  # As the checkpoint's JSON item keeps it.
    clock.advance(1.0)
  assert saved == {"train_time_s": 20.0, "wall_time_s": 25.0, "targets_reached": [0.5]}
  clock.advance(30.0)  # Trained on, then killed before the next checkpoint: this time is lost.
  assert first.train_time_s() == 50.0

  second = session(clock, saved, targets=(0.5, 0.9), setup_s=4.0, compile_s=6.0)
  clock.advance(8.0)
  assert second.train_time_s() == 20.0 + 8.0
  assert second.wall_time_s() == 25.0 + 4.0 + 6.0 + 8.0
  assert second.compile_time_s == 6.0
  fields = second.eval_fields(0.95)
  assert fields == {"train_time_s": 28.0, "wall_time_s": 43.0, "time_to_0.9_s": 28.0}


def test_a_clock_without_saved_state_starts_at_zero():
  clock = FakeClock()
  train = session(clock, None, targets=(0.5,))
  clock.advance(4.0)
  assert (train.train_time_s(), train.wall_time_s()) == (4.0, 9.0)
  assert "time_to_0.5_s" in train.eval_fields(0.5)


def test_time_to_accuracy_reads_the_totals_and_the_first_reach_from_the_lines():
  records = [{"step": 10, "train_loss": 1.0, "compile_time_s": 5.0, "train_time_s": 2.0},
             {"step": 10, "eval_accuracy": 0.5, "train_time_s": 2.0, "wall_time_s": 9.0,
              "time_to_0.5_s": 2.0},
             {"step": 20, "train_loss": 1.0, "train_time_s": 4.0},  # Then stopped; resumed at 10.
             {"step": 20, "train_loss": 1.0, "compile_time_s": 4.0, "train_time_s": 4.5},
             {"step": 20, "eval_accuracy": 0.9, "train_time_s": 4.5, "wall_time_s": 17.0,
              "time_to_0.9_s": 4.5}]
  assert timing.total_train_time(records) == 4.5
  assert timing.total_wall_time(records) == 17.0
  assert timing.total_compile_time(records) == 9.0
  assert timing.first_reached(records, (0.5, 0.9, 0.95)) == {0.5: (2.0, 10), 0.9: (4.5, 20)}
  assert timing.target_key(0.94) == "time_to_0.94_s"


def test_a_checkpoint_without_a_clock_rebuilds_it_from_the_lines_up_to_its_step():
  # Written before the clock was saved: each session's wall_time_s counted from its own start.
  records = [{"step": 4, "train_loss": 2.0, "train_time_s": 3.0},
             {"step": 4, "eval_accuracy": 0.6, "train_time_s": 3.0, "wall_time_s": 14.0,
              "time_to_0.5_s": 3.0},
             {"step": 8, "eval_accuracy": 0.7, "train_time_s": 6.0, "wall_time_s": 20.0},
             # Killed, resumed from step 4 by a session that reached step 6 and saved it:
             {"step": 6, "train_loss": 1.5, "train_time_s": 4.0, "compile_time_s": 9.0},
             {"step": 6, "eval_accuracy": 0.8, "train_time_s": 4.0, "wall_time_s": 12.0,
              "time_to_0.75_s": 4.0},
             {"step": 8, "train_loss": 1.0, "train_time_s": 5.0}]  # Lost after the checkpoint.
  state = timing.clock_from_log(records, 6, (0.5, 0.75, 0.9))
  assert state == {"train_time_s": 4.0, "wall_time_s": 14.0 + 12.0, "targets_reached": [0.5, 0.75]}
  assert timing.clock_from_log([], 6, (0.5,)) == {"train_time_s": 0.0, "wall_time_s": 0.0,
                                                  "targets_reached": []}


@pytest.mark.parametrize("accuracy, expected", [(0.49, set()), (0.5, {"time_to_0.5_s"}),
                                                (0.97, {"time_to_0.5_s", "time_to_0.95_s"})])
def test_each_target_is_reported_once_when_first_reached(accuracy, expected):
  train = session(FakeClock(), targets=(0.5, 0.95))
  assert {k for k in train.eval_fields(accuracy) if k.startswith("time_to_")} == expected
  assert {k for k in train.eval_fields(1.0) if k.startswith("time_to_")} == (
      {"time_to_0.5_s", "time_to_0.95_s"} - expected)
