"""The real command end to end on mock CIFAR-10: train, eval, resume, errors."""

import json
import os
import signal

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax import checkpointing, steps, trainer
from resnet_jax.errors import Stopped
from tests.conftest import REPO, run_main, tiny_config, tiny_flags

MOCK_EXAMPLES = 48  # Per split: 3 steps per epoch at batch 16.


def test_train_then_eval(tmp_path):
  workdir = tmp_path / "run"
  result = run_main(tiny_flags(workdir, tmp_path / "data", num_epochs=2.0), MOCK_EXAMPLES, check=0)
  assert "Traceback" not in result.stderr
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [r for r in records if "train_loss" in r]
  eval_lines = [r for r in records if "eval_accuracy" in r]
  assert {"step", "epoch", "train_loss", "train_accuracy", "learning_rate",
          "images_per_second"} <= set(train_lines[0])
  assert [r["step"] for r in eval_lines] == [3, 6]  # One eval per epoch.
  assert all(0 <= r["eval_accuracy"] <= 1 for r in eval_lines)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == "resnet_tiny" and saved["num_classes"] == 10
  assert len(saved["mean"]) == 3 and len(saved["class_names"]) == 10
  assert checkpointing.Checkpointer(workdir / "checkpoints", read_only=True).steps() == [3, 6]
  assert "best" in result.stdout.lower()  # The end-of-run summary.

  result = run_main([f"--workdir={workdir}", "--mode=eval", "--quiet"], MOCK_EXAMPLES, check=0)
  report = json.loads((workdir / "eval.json").read_text())
  assert report["eval_count"] == MOCK_EXAMPLES
  assert np.sum(report["confusion_matrix"]) == MOCK_EXAMPLES
  best = max(eval_lines, key=lambda r: (r["eval_accuracy"], r["step"]))
  assert report["step"] == best["step"]
  assert report["eval_accuracy"] == pytest.approx(best["eval_accuracy"])
  assert f"step {report['step']}" in result.stdout


def final_params(workdir):
  manager = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
  step = manager.latest_step()
  return step, jax.device_get(manager.restore(step))


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
  config = tiny_config(num_epochs=3.0, data_dir=str(tmp_path / "data"),
                       checkpoint_every_epochs=1.0)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    trainer.train_and_evaluate(config, str(tmp_path / "straight"), quiet=True)

    compile_step = steps.compile_train_step
    calls = {"n": 0}

    def compile_and_interrupt(*args, **kwargs):
      step = compile_step(*args, **kwargs)

      def interrupted(state, data):
        calls["n"] += 1
        if calls["n"] == 5:  # Mid-epoch 2: between scheduled checkpoints.
          os.kill(os.getpid(), signal.SIGTERM)
        return step(state, data)
      return interrupted

    monkeypatch.setattr(steps, "compile_train_step", compile_and_interrupt)
    with pytest.raises(Stopped) as stopped:
      trainer.train_and_evaluate(config, str(tmp_path / "resumed"), quiet=True)
    assert stopped.value.exit_code == 143
    assert final_params(tmp_path / "resumed")[0] == 5  # Saved at the signal, not at step 3.
    monkeypatch.setattr(steps, "compile_train_step", compile_step)
    trainer.train_and_evaluate(config, str(tmp_path / "resumed"), quiet=True)

  step_a, straight = final_params(tmp_path / "straight")
  step_b, resumed = final_params(tmp_path / "resumed")
  assert step_a == step_b == 9
  for part in ("params", "batch_stats", "opt_state", "step"):
    jax.tree.map(np.testing.assert_array_equal, straight[part], resumed[part])


def test_offline_without_data_fails_in_one_line(tmp_path):
  import subprocess, sys
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
       f"--config.data_dir={tmp_path / 'empty'}", f"--config.manual_dir={tmp_path / 'archives'}"],
      capture_output=True, text=True, timeout=120,
      cwd=REPO)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: manual_dir")
  assert not workdir.exists()
