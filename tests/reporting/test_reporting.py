"""Tests for resnet_jax.reporting: metrics.jsonl, TensorBoard events, the end-of-run summary."""

import glob
import json
import logging
import os
import re
import struct
import sys

import pytest

from resnet_jax.reporting import metric_log
from resnet_jax.errors import UserError


def read_events(logdir: str) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar in logdir's event files, read as TFRecords."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto.event_pb2 import Event

  def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  scalars = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
      assert header_crc == masked_crc32c(header), f"{path}: bad length checksum"
      body = data[offset + 12:offset + 12 + length]
      (body_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
      assert body_crc == masked_crc32c(body), f"{path}: bad record checksum"
      offset += 16 + length
      event = Event.FromString(body)
      for value in event.summary.value:
        scalars.append((value.tag, event.step, value.simple_value))
  return scalars


def write_lines(workdir: str, records: list[dict], config: dict | None = None) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  if config is not None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config, f)


TRAIN = {"train_loss": 2.25, "train_accuracy": 0.125, "learning_rate": 0.05,
         "images_per_second": 1000.0}


def test_writer_appends_json_lines(tmp_path):
  writer = metric_log.MetricWriter(str(tmp_path))
  writer.write(10, 0.123456, TRAIN)
  writer.write(20, 0.25, {"eval_loss": 1.5, "eval_accuracy": 0.5})
  writer.close()
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert lines == [{"step": 10, "epoch": 0.1235, **TRAIN},
                   {"step": 20, "epoch": 0.25, "eval_loss": 1.5, "eval_accuracy": 0.5}]


def test_writer_mirrors_every_scalar_to_tensorboard(tmp_path):
  with metric_log.MetricWriter(str(tmp_path)) as writer:
    writer.write(10, 0.5, TRAIN)
    writer.write(20, 1.0, {**TRAIN, "train_loss": 1.75})
    writer.write(20, 1.0, {"eval_loss": 1.5, "eval_accuracy": 0.625, "wall_time_s": 12.5})
  scalars = read_events(str(tmp_path / "tensorboard"))
  expected = [
      ("epoch", 10, 0.5), ("train/loss", 10, 2.25), ("train/accuracy", 10, 0.125),
      ("learning_rate", 10, 0.05), ("images_per_second", 10, 1000.0),
      ("epoch", 20, 1.0), ("train/loss", 20, 1.75), ("train/accuracy", 20, 0.125),
      ("learning_rate", 20, 0.05), ("images_per_second", 20, 1000.0),
      ("epoch", 20, 1.0), ("eval/loss", 20, 1.5), ("eval/accuracy", 20, 0.625),
      ("wall_time_s", 20, 12.5)]
  assert [(tag, step) for tag, step, _ in scalars] == [(tag, step) for tag, step, _ in expected]
  assert [value for *_, value in scalars] == pytest.approx([value for *_, value in expected])


def test_writer_flushes_at_each_eval_line(tmp_path):
  writer = metric_log.MetricWriter(str(tmp_path))
  writer.write(10, 0.5, TRAIN)
  writer.write(10, 0.5, {"eval_loss": 1.5, "eval_accuracy": 0.75})
  # Still open: what an eval write carried must already be on disk.
  tags = {(tag, step, value) for tag, step, value in read_events(str(tmp_path / "tensorboard"))}
  writer.close()
  assert ("eval/accuracy", 10, 0.75) in tags
  assert ("train/loss", 10, 2.25) in tags


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  writer = metric_log.MetricWriter(str(workdir), enabled=False)
  writer.write(10, 0.5, TRAIN)
  writer.write(10, 0.5, {"eval_loss": 1.5, "eval_accuracy": 0.75})
  writer.close()
  assert not workdir.exists()
  assert list(tmp_path.iterdir()) == []


def test_writer_without_tensorboardx_keeps_jsonl_and_warns_once(tmp_path, monkeypatch, caplog):
  # A None entry makes an import fail, also of submodules imported by earlier tests.
  for name in [m for m in sys.modules if m.split(".")[0] == "tensorboardX"] + ["tensorboardX"]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setattr(metric_log, "_warned_without_tensorboardx", False)
  caplog.set_level(logging.WARNING)
  for name in ("a", "b"):
    writer = metric_log.MetricWriter(str(tmp_path / name))
    writer.write(10, 0.5, TRAIN)
    writer.write(10, 0.5, {"eval_loss": 1.5, "eval_accuracy": 0.75})
    writer.close()
    assert os.listdir(tmp_path / name) == ["metrics.jsonl"]
  warnings = [r for r in caplog.records if "tensorboardX" in r.getMessage()]
  assert len(warnings) == 1


def test_writer_repairs_a_torn_last_line_before_appending(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  path = tmp_path / "metrics.jsonl"
  whole = json.dumps({"step": 10, "epoch": 0.5, **TRAIN})
  path.write_text(whole + "\n" + '{"step": 20, "epoch": 1.0, "train_lo')  # Killed mid-write.
  with metric_log.MetricWriter(str(tmp_path)) as writer:
    writer.write(30, 1.5, TRAIN)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 30]
  assert [r.getMessage() for r in caplog.records] == [
      f"{path} ended in a torn line (a run killed while writing it): removed it, "
      "'{\"step\": 20, \"epoch\": 1.0, \"train_lo'"]

  caplog.clear()
  path.write_text(whole)  # Only the newline was lost: the record stays.
  with metric_log.MetricWriter(str(tmp_path)) as writer:
    writer.write(30, 1.5, TRAIN)
  assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 30]
  assert not caplog.records

  path.write_text('{"step": 1')  # A torn first line: the file empties.
  metric_log.repair_tail(str(path))
  assert path.read_text() == ""


def test_tensorboard_tag():
  assert metric_log.tensorboard_tag("train_loss") == "train/loss"
  assert metric_log.tensorboard_tag("eval_accuracy") == "eval/accuracy"
  assert metric_log.tensorboard_tag("learning_rate") == "learning_rate"
  assert metric_log.tensorboard_tag("train_") == "train_"


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
  summary = metric_log.summarize_run(str(tmp_path))
  assert summary["best_eval_accuracy"] == 0.81 and summary["best_eval_step"] == 200
  assert summary["final_eval_accuracy"] == 0.78 and summary["final_eval_step"] == 300
  assert summary["final_eval_loss"] == 0.9
  assert summary["num_evals"] == 3
  assert summary["epochs_completed"] == 3.0 and summary["steps_completed"] == 300
  assert summary["wall_time_s"] == 31.5
  assert summary["mean_images_per_second"] == pytest.approx(2000.0)
  assert (summary["model"], summary["dataset"], summary["num_epochs"]) == ("resnet18", "cifar10", 3.0)


def test_summarize_run_prefers_the_resumed_lines_and_adds_sessions(tmp_path):
  # The first session reached step 200 in 20 s; the resume restarted from step 100.
  resumed = RUN[:5] + [
      {"step": 200, "epoch": 2.0, "eval_loss": 1.0, "eval_accuracy": 0.7, "wall_time_s": 8.0},
      {"step": 300, "epoch": 3.0, "eval_loss": 0.9, "eval_accuracy": 0.75, "wall_time_s": 16.0}]
  write_lines(str(tmp_path), resumed)
  summary = metric_log.summarize_run(str(tmp_path))
  assert summary["best_eval_accuracy"] == 0.75 and summary["best_eval_step"] == 300
  assert summary["num_evals"] == 3
  assert summary["wall_time_s"] == 20.0 + 16.0
  assert summary["model"] is None


def test_summarize_run_takes_final_and_best_from_the_checkpoints_steps(tmp_path):
  # A longer run logged step 400 before being resumed, shorter, from an earlier checkpoint;
  # the best checkpoint is step 300 (kept), not step 200 (never saved).
  write_lines(str(tmp_path), RUN + [
      {"step": 400, "epoch": 4.0, "eval_loss": 0.5, "eval_accuracy": 0.9, "wall_time_s": 40.0}])
  summary = metric_log.summarize_run(str(tmp_path), final_step=300, best_step=300)
  assert (summary["final_eval_step"], summary["final_eval_accuracy"]) == (300, 0.78)
  assert (summary["best_eval_step"], summary["best_eval_accuracy"]) == (300, 0.78)
  # Without an eval at the best checkpoint's step, the best logged eval up to the final step.
  summary = metric_log.summarize_run(str(tmp_path), final_step=300, best_step=150)
  assert (summary["best_eval_step"], summary["best_eval_accuracy"]) == (200, 0.81)


def test_summarize_run_without_eval_lines(tmp_path):
  with open(tmp_path / "metrics.jsonl", "w") as f:  # Ends in a torn line.
    f.write(json.dumps(RUN[0]) + "\n" + json.dumps(RUN[1]) + "\n" + '{"step": 120, "epo')
  summary = metric_log.summarize_run(str(tmp_path))
  assert summary["final_eval_accuracy"] is None and summary["best_eval_step"] is None
  assert summary["num_evals"] == 0 and summary["wall_time_s"] is None
  assert summary["steps_completed"] == 100
  text = metric_log.format_summary(summary, None, str(tmp_path))
  assert "no evaluation" in text and "none saved" in text and "not logged" in text


def test_summarize_run_without_metrics_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no metrics.jsonl"):
    metric_log.summarize_run(str(tmp_path))


def test_format_summary_aligns_rows_and_gives_the_commands(tmp_path):
  workdir = str(tmp_path / "my run")
  write_lines(workdir, RUN, {"model": "resnet18", "dataset": "cifar10", "num_epochs": 3.0})
  text = metric_log.format_summary(metric_log.summarize_run(workdir),
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
  assert metric_log.format_duration(12.34) == "12.3s"
  assert metric_log.format_duration(245) == "4m 05s"
  assert metric_log.format_duration(3723.4) == "1h 02m 03s"
