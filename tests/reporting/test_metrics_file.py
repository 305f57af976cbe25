"""Tests for resnet_jax.reporting.metrics_file: metrics.jsonl appended, repaired and read back."""

import json
import logging

import pytest

from resnet_jax.errors import UserError
from resnet_jax.reporting import metrics_file

TRAIN = {"train_loss": 2.25, "train_accuracy": 0.125, "learning_rate": 0.05,
         "images_per_second": 1000.0}


def test_writer_appends_json_lines(tmp_path):
  writer = metrics_file.MetricWriter(str(tmp_path))
  writer.write(10, 0.123456, TRAIN)
  writer.write(20, 0.25, {"eval_loss": 1.5, "eval_accuracy": 0.5})
  writer.close()
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 10, "epoch": 0.1235, **TRAIN},
                   {"step": 20, "epoch": 0.25, "eval_loss": 1.5, "eval_accuracy": 0.5}]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  writer = metrics_file.MetricWriter(str(workdir), enabled=False)
  writer.write(10, 0.5, TRAIN)
  writer.write(10, 0.5, {"eval_loss": 1.5, "eval_accuracy": 0.75})
  writer.close()
  assert not workdir.exists()
  assert list(tmp_path.iterdir()) == []


def test_idle_writer_leaves_no_files(tmp_path):
  with metrics_file.MetricWriter(str(tmp_path / "run")):
    pass
  assert list(tmp_path.iterdir()) == []


def test_writer_repairs_a_torn_last_line_before_appending(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  path = tmp_path / "metrics.jsonl"
  whole = json.dumps({"step": 10, "epoch": 0.5, **TRAIN})
  path.write_text(whole + "\n" + '{"step": 20, "epoch": 1.0, "train_lo')  # Killed mid-write.
  with metrics_file.MetricWriter(str(tmp_path)) as writer:
    writer.write(30, 1.5, TRAIN)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 30]
  assert [r.getMessage() for r in caplog.records] == [
      f"{path} ended in a torn line (a run killed while writing it): removed it, "
      "'{\"step\": 20, \"epoch\": 1.0, \"train_lo'"]

  caplog.clear()
  path.write_text(whole)  # Only the newline was lost: the record stays.
  with metrics_file.MetricWriter(str(tmp_path)) as writer:
    writer.write(30, 1.5, TRAIN)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 30]
  assert not caplog.records

  path.write_text('{"step": 1')  # A torn first line: the file empties.
  metrics_file.repair_tail(str(path))
  assert path.read_text() == ""


def test_read_metrics_skips_lines_that_are_not_records(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 1, "train_loss": 2.0}\n\n[1, 2]\n{"epoch": 0.5}\n{"step": 2, "train_lo\n'
      '{"step": 3, "train_loss": 1.0}\n')
  assert metrics_file.read_metrics(str(tmp_path)) == [{"step": 1, "train_loss": 2.0},
                                                      {"step": 3, "train_loss": 1.0}]
  assert [r.getMessage().split(" is not")[0][-6:] for r in caplog.records] == [
      "line 3", "line 4", "line 5"]


def test_read_metrics_without_the_file_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="has no metrics.jsonl: pass the --workdir of a training"):
    metrics_file.read_metrics(str(tmp_path))


def test_series_keeps_the_last_line_written_for_each_step():
  records = [{"step": 20, "eval_accuracy": 0.5}, {"step": 10, "eval_accuracy": 0.25},
             {"step": 20, "train_loss": 1.0},  # Carries no eval_accuracy: not in the series.
             {"step": 20, "eval_accuracy": 0.75}]  # A resumed run's line for step 20.
  assert metrics_file.series(records, "eval_accuracy") == [
      {"step": 10, "eval_accuracy": 0.25}, {"step": 20, "eval_accuracy": 0.75}]
