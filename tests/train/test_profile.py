"""config.profile_steps: a JAX profiler trace of steady-state training steps in <workdir>/profile."""

import glob
import os

import jax
import pytest
import tensorflow_datasets as tfds

from resnet_jax.config import configuration
from resnet_jax.train import profiling, trainer
from resnet_jax.errors import UserError
from tests.conftest import tiny_config

MOCK_EXAMPLES = 48  # Per split: 3 steps per epoch at batch 16.


def trace_files(workdir) -> list[str]:
  return glob.glob(os.path.join(profiling.profile_dir(str(workdir)), "**", "*.xplane.pb"),
                   recursive=True)


def test_profile_steps_writes_a_trace_of_the_training_step(tmp_path):
  config = tiny_config(profile_steps=2, data_dir=str(tmp_path / "data"))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    trainer.train_and_evaluate(config, str(tmp_path / "run"), quiet=True)
  files = trace_files(tmp_path / "run")
  assert len(files) == 1
  assert b"jit_step" in open(files[0], "rb").read()  # The compiled training step ran in it.


class FakeProfiler:
  """Records start_trace/stop_trace calls instead of tracing."""

  def __init__(self, monkeypatch):
    self.calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d: self.calls.append(("start", d)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: self.calls.append(("stop",)))


def run_steps(profile: profiling.StepProfile, steps: range) -> None:
  try:
    for step in steps:
      profile.before(step)
      profile.after(step, None)
  finally:
    profile.close()


def test_trace_covers_the_chosen_steps(tmp_path, monkeypatch):
  fake = FakeProfiler(monkeypatch)
  seen = []
  profile = profiling.StepProfile(str(tmp_path), num_steps=3, first_step=2)
  for step in range(1, 8):
    profile.before(step)
    seen.append((step, profile.active))
    profile.after(step, None)
  profile.close()
  assert fake.calls == [("start", str(tmp_path)), ("stop",)]
  assert [step for step, active in seen if active] == [2, 3, 4]


def test_a_run_that_ends_early_still_stops_the_trace(tmp_path, monkeypatch):
  fake = FakeProfiler(monkeypatch)
  with pytest.raises(RuntimeError):
    run_steps(profiling.StepProfile(str(tmp_path), num_steps=10, first_step=2),
              _failing_at(3))
  assert fake.calls == [("start", str(tmp_path)), ("stop",)]
  run_steps(profiling.StepProfile(str(tmp_path), num_steps=10, first_step=2), range(1, 5))
  assert fake.calls[2:] == [("start", str(tmp_path)), ("stop",)]  # Fewer steps than asked.


def _failing_at(last: int):
  for step in range(1, 100):
    if step == last:
      raise RuntimeError("non-finite loss")
    yield step


def test_off_and_on_other_processes_no_trace(tmp_path, monkeypatch):
  fake = FakeProfiler(monkeypatch)
  run_steps(profiling.StepProfile(str(tmp_path), num_steps=0, first_step=2), range(1, 5))
  run_steps(profiling.StepProfile(str(tmp_path), num_steps=2, first_step=2, enabled=False),
            range(1, 5))
  assert fake.calls == []


def test_profile_steps_must_not_be_negative():
  config = tiny_config(profile_steps=-1)  # ConfigDict itself refuses floats for this int field.
  with pytest.raises(UserError, match="profile_steps"):
    configuration.validate(config)
