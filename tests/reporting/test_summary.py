"""Tests for resnet_jax.reporting.summary: the facts of a run and the end-of-run table."""

import json
import os
import re

import pytest

from resnet_jax.errors import UserError
from resnet_jax.reporting import summary


def write_lines(workdir: str, records: list[dict], config: dict | None = None) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  if config is not None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config, f)


TRAIN = {"train_loss": 2.25, "train_accuracy": 0.125, "learning_rate": 0.05,
         "images_per_second": 1000.0}

RUN = [
    {"step": 50, "epoch": 0.5, **TRAIN, "images_per_second": 1000.0},
    {"step": 100, "epoch": 1.0, **TRAIN, "images_per_second": 3000.0},
    {"step": 100, "epoch": 1.0, "eval_loss": 1.2, "eval_accuracy": 0.55, "wall_time_s": 10.0},
    {"step": 150, "epoch": 1.5, **TRAIN, "images_per_second": 2000.0},
    {"step": 200, "epoch": 2.0, "eval_loss": 0.8, "eval_accuracy": 0.81, "wall_time_s": 20.0},
    {"step": 300, "epoch": 3.0, "eval_loss": 0.9, "eval_accuracy": 0.78, "wall_time_s": 30.0},
    {"step": 300, "epoch": 3.0, "wall_time_s": 31.5},
]


def test_summarize_run_finds_best_and_final(tmp_path):
  write_lines(str(tmp_path), RUN, {"model": "resnet18", "dataset": "cifar10", "num_epochs": 3.0,
                                   "class_names": ["a", "b"]})
  facts = summary.summarize_run(str(tmp_path))
  assert facts["best_eval_accuracy"] == 0.81 and facts["best_eval_step"] == 200
  assert facts["final_eval_accuracy"] == 0.78 and facts["final_eval_step"] == 300
  assert facts["final_eval_loss"] == 0.9
  assert facts["num_evals"] == 3
  assert facts["epochs_completed"] == 3.0 and facts["steps_completed"] == 300
  assert facts["wall_time_s"] == 31.5
  assert facts["mean_images_per_second"] == pytest.approx(2000.0)
  assert (facts["model"], facts["dataset"], facts["num_epochs"]) == ("resnet18", "cifar10", 3.0)


def test_summarize_run_prefers_the_resumed_lines_and_takes_the_last_times(tmp_path):
  # The first session reached step 200 in 20 s; the resume from the checkpoint at step 100
  # went on from the 10 s saved with it, so the lines it wrote carry the run's totals.
  resumed = RUN[:5] + [
      {"step": 200, "epoch": 2.0, "eval_loss": 1.0, "eval_accuracy": 0.7, "wall_time_s": 18.0,
       "train_time_s": 15.0},
      {"step": 300, "epoch": 3.0, "eval_loss": 0.9, "eval_accuracy": 0.75, "wall_time_s": 26.0,
       "train_time_s": 21.0}]
  write_lines(str(tmp_path), resumed)
  facts = summary.summarize_run(str(tmp_path))
  assert facts["best_eval_accuracy"] == 0.75 and facts["best_eval_step"] == 300
  assert facts["num_evals"] == 3
  assert (facts["wall_time_s"], facts["train_time_s"]) == (26.0, 21.0)
  assert facts["model"] is None


def test_summarize_run_takes_final_and_best_from_the_checkpoints_steps(tmp_path):
  # A longer run logged step 400 before being resumed, shorter, from an earlier checkpoint;
  # the best checkpoint is step 300 (kept), not step 200 (never saved).
  write_lines(str(tmp_path), RUN + [
      {"step": 400, "epoch": 4.0, "eval_loss": 0.5, "eval_accuracy": 0.9, "wall_time_s": 40.0}])
  facts = summary.summarize_run(str(tmp_path), final_step=300, best_step=300)
  assert (facts["final_eval_step"], facts["final_eval_accuracy"]) == (300, 0.78)
  assert (facts["best_eval_step"], facts["best_eval_accuracy"]) == (300, 0.78)
  # Without an eval at the best checkpoint's step, the best logged eval up to the final step.
  facts = summary.summarize_run(str(tmp_path), final_step=300, best_step=150)
  assert (facts["best_eval_step"], facts["best_eval_accuracy"]) == (200, 0.81)


def test_summarize_run_without_eval_lines(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:  # Ends in a torn line.
    f.write(json.dumps(RUN[0]) + "\n" + json.dumps(RUN[1]) + "\n" + '{"step": 120, "epo')
  facts = summary.summarize_run(str(tmp_path))
  assert facts["final_eval_accuracy"] is None and facts["best_eval_step"] is None
  assert facts["num_evals"] == 0 and facts["wall_time_s"] is None
  assert facts["steps_completed"] == 100
  text = summary.format_summary(facts, None, str(tmp_path))
  assert "no evaluation" in text and "none saved" in text and "not logged" in text


def test_summarize_run_without_metrics_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no metrics.jsonl"):
    summary.summarize_run(str(tmp_path))


def test_format_summary_aligns_rows_and_gives_the_commands(tmp_path):
  workdir = str(tmp_path / "my run")
  write_lines(workdir, RUN, {"model": "resnet18", "dataset": "cifar10", "num_epochs": 3.0})
  text = summary.format_summary(summary.summarize_run(workdir),
                                  os.path.join(workdir, "checkpoints", "200"), workdir)
  lines = text.splitlines()
  assert lines[0].startswith("Run summary: resnet18 on cifar10")
  rows = [line for line in lines if line.startswith("  ")]
  assert len(rows) == 7
  value_columns = {re.match(r"  \S+(?: \S+)*  +", row).end() for row in rows}
  assert len(value_columns) == 1
  assert any("81.00%  (step 200)" in row and "best eval" in row for row in rows)
  assert any("78.00%  (step 300, loss 0.9000)" in row for row in rows)
  assert any("31.5s" in row for row in rows) and any("2,000" in row for row in rows)
  assert any("3.00 of 3" in row for row in rows)
  assert lines[-2] == f"Evaluate:  python -m resnet_jax.main --workdir='{workdir}' --mode=eval"
  assert f"--config.init_checkpoint='{workdir}'" in lines[-1]
  assert lines[-1].startswith("Fine-tune: python -m resnet_jax.main --config=")


def test_format_duration():
  assert summary.format_duration(12.34) == "12.3s"
  assert summary.format_duration(245) == "4m 05s"
  assert summary.format_duration(3723.4) == "1h 02m 03s"
