"""The real command end to end on mock CIFAR-10: train, eval, resume, errors."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax.checkpoints import checkpointing
from resnet_jax.train import trainer
from tests.conftest import REPO, assert_resume_is_exact, run_main, tiny_config, tiny_flags

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


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
  config = tiny_config(num_epochs=3.0, data_dir=str(tmp_path / "data"),
                       checkpoint_every_epochs=1.0)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    # Call 5 is mid-epoch 2: between scheduled checkpoints.
    assert_resume_is_exact(config, tmp_path, monkeypatch, stop_at_call=5, num_steps=9)


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


def test_training_loop_makes_no_hidden_host_transfers(tmp_path):
  """Steps, metric reads, evaluation and saves under transfer_guard("disallow").

  On CPU the guard catches implicit host-to-device transfers (a numpy array or
  Python number handed to a compiled function each step, which syncs the host);
  device-to-host copies are not guarded there. Every transfer in the loop must
  be an explicit one."""
  config = tiny_config(num_epochs=2.0, log_every_steps=2, data_dir=str(tmp_path / "data"))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    run = trainer.Trainer(config, str(tmp_path / "run"), quiet=True)
  try:
    with jax.transfer_guard("disallow"):
      result = run.train()
  finally:
    run.close()
  assert result["step"] == 6 and result["eval"]["eval_count"] == MOCK_EXAMPLES
