"""The trainer's clock across a resume: saved with each checkpoint, continued from it.

A fake clock replaces time.monotonic in the run's TrainClock and moves only
when a train step is called (STEP_S) or an evaluation runs (EVAL_S), so the
times below follow from the steps run, not from the machine's speed.
"""

import functools
import json
import shutil

import pytest
import tensorflow_datasets as tfds

from resnet_jax.checkpoints import checkpointing
from resnet_jax.evaluation import evaluator
from resnet_jax.reporting import metrics_file, summary, timing
from resnet_jax.train import steps, trainer
from tests.conftest import REPO, tiny_config

MOCK_EXAMPLES = 48  # 3 steps per epoch at batch 16: an eval and a checkpoint every 3 steps.
STEP_S, EVAL_S = 1.0, 100.0
FIXTURE = f"{REPO}/tests/fixtures/pre_layout_run"  # Written before the clock was saved.
FIXTURE_DATA = f"{REPO}/tests/fixtures/pre_layout_data"


class Crash(Exception):
  """The run dies between checkpoints (no save, unlike a signal)."""


class FakeClock:
  def __init__(self):
    self.seconds = 1000.0

  def __call__(self) -> float:
    return self.seconds


def run_with_fake_clock(monkeypatch, config, workdir, crash_at_call: int | None = None) -> None:
  """Trains with the fake clock; the crash_at_call-th train step call raises Crash instead."""
  clock, calls = FakeClock(), {"n": 0}
  compile_step, run_eval = steps.compile_train_step, evaluator.Evaluator.run

  def compile_and_time(*args, **kwargs):
    step = compile_step(*args, **kwargs)

    def timed(state, batch):
      calls["n"] += 1
      if calls["n"] == crash_at_call:
        raise Crash()
      clock.seconds += STEP_S
      return step(state, batch)
    return timed

  def timed_eval(self, state):
    clock.seconds += EVAL_S
    return run_eval(self, state)

  with monkeypatch.context() as patch:
    patch.setattr(steps, "compile_train_step", compile_and_time)
    patch.setattr(evaluator.Evaluator, "run", timed_eval)
    patch.setattr(timing, "TrainClock", functools.partial(timing.TrainClock, now=clock))
    trainer.train_and_evaluate(config, str(workdir), quiet=True)


def saved_clock(workdir, step: int) -> dict | None:
  reader = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
  try:
    return reader.restore_clock(step)
  finally:
    reader.close()


@pytest.mark.slow
def test_a_resumed_run_continues_the_saved_training_time_without_the_time_lost(tmp_path,
                                                                               monkeypatch):
  config = tiny_config(num_epochs=2.0, data_dir=str(tmp_path / "data"))
  workdir = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    # Steps 1-4 run (the first is compilation), step 3 is evaluated and saved, then the run dies.
    with pytest.raises(Crash):
      run_with_fake_clock(monkeypatch, config, workdir, crash_at_call=5)
    saved = saved_clock(workdir, 3)
    assert saved == {"train_time_s": 2 * STEP_S, "wall_time_s": 3 * STEP_S + EVAL_S,
                     "targets_reached": []}
    lost = [r["train_time_s"] for r in metrics_file.read_metrics(str(workdir)) if r["step"] == 4]
    assert lost == [3 * STEP_S]  # Logged, but the resume does step 4 again.
    run_with_fake_clock(monkeypatch, config, workdir)  # Resumes at step 3: steps 4-6.
  records = metrics_file.read_metrics(str(workdir))
  session = [r for r in records if "compile_time_s" in r][-1]
  assert (session["step"], session["compile_time_s"]) == (4, STEP_S)  # Step 4 compiled anew.
  new_training_s = 2 * STEP_S  # Steps 5 and 6.
  final = [r for r in records if r["step"] == 6]
  assert [r["train_time_s"] for r in final] == [saved["train_time_s"] + new_training_s] * 2
  assert final[-1]["wall_time_s"] == saved["wall_time_s"] + 3 * STEP_S + EVAL_S
  assert saved_clock(workdir, 6)["train_time_s"] == saved["train_time_s"] + new_training_s
  facts = summary.summarize_run(str(workdir))
  assert facts["train_time_s"] == saved["train_time_s"] + new_training_s
  assert facts["wall_time_s"] == final[-1]["wall_time_s"]
  assert facts["compile_time_s"] == 2 * STEP_S


@pytest.mark.slow
@pytest.mark.parametrize("clock_item", ["absent", "damaged"])
def test_a_checkpoint_without_a_readable_clock_resumes_from_its_metrics_lines(tmp_path, monkeypatch,
                                                                             caplog, clock_item):
  data, workdir = shutil.copytree(FIXTURE_DATA, tmp_path / "data"), tmp_path / "run"
  shutil.copytree(FIXTURE, workdir)
  assert saved_clock(workdir, 8) is None
  if clock_item == "damaged":
    (workdir / "checkpoints" / "8" / "clock").mkdir()
    (workdir / "checkpoints" / "8" / "clock" / "metadata").write_text('{"train_time_s": 1')
  old = [json.loads(line) for line in open(f"{FIXTURE}/metrics.jsonl")]
  old_train_s = [r["train_time_s"] for r in old if r["step"] == 8][-1]
  old_wall_s = [r["wall_time_s"] for r in old if "wall_time_s" in r][-1]  # One session.
  # 4 steps per epoch: resumes at step 8, runs 9 (compiled) to 12, evaluates and saves 12.
  run_with_fake_clock(monkeypatch, tiny_config(num_epochs=3.0, data_dir=str(data)), workdir)
  new = metrics_file.read_metrics(str(workdir))[len(old):]
  last_eval = [r for r in new if "eval_accuracy" in r][-1]
  assert last_eval["step"] == 12
  assert last_eval["train_time_s"] == pytest.approx(old_train_s + 3 * STEP_S)
  assert last_eval["wall_time_s"] == pytest.approx(old_wall_s + 4 * STEP_S + EVAL_S)
  assert saved_clock(workdir, 12)["train_time_s"] == pytest.approx(old_train_s + 3 * STEP_S)
  warned = [r for r in caplog.records if "does not read back" in r.getMessage()]
  assert len(warned) == (clock_item == "damaged")
