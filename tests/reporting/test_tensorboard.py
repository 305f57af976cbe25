"""Tests for resnet_jax.reporting.tensorboard: tags, and the event files of a MetricWriter."""

import glob
import os
import struct

import pytest

from resnet_jax.reporting import metrics_file, tensorboard

TRAIN = {"train_loss": 2.25, "train_accuracy": 0.125, "learning_rate": 0.05,
         "images_per_second": 1000.0}


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


def test_tensorboard_tag():
  assert tensorboard.tensorboard_tag("train_loss") == "train/loss"
  assert tensorboard.tensorboard_tag("eval_accuracy") == "eval/accuracy"
  assert tensorboard.tensorboard_tag("learning_rate") == "learning_rate"
  assert tensorboard.tensorboard_tag("train_") == "train_"


def test_writer_mirrors_every_scalar_to_tensorboard(tmp_path):
  with metrics_file.MetricWriter(str(tmp_path)) as writer:
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
  writer = metrics_file.MetricWriter(str(tmp_path))
  writer.write(10, 0.5, TRAIN)
  assert read_events(str(tmp_path / "tensorboard")) == []  # A train line alone waits.
  writer.write(10, 0.5, {"eval_loss": 1.5, "eval_accuracy": 0.75})
  # Still open: what an eval write carried must already be on disk.
  tags = {(tag, step, value) for tag, step, value in read_events(str(tmp_path / "tensorboard"))}
  writer.close()
  assert ("eval/accuracy", 10, 0.75) in tags
  assert ("train/loss", 10, 2.25) in tags


def test_event_file_flushes_by_itself_a_minute_after_the_last_flush(tmp_path):
  seconds = [1000.0]
  events = tensorboard.EventFile(str(tmp_path), now=lambda: seconds[0])
  events.add_scalars(1, {"train/loss": 2.0})
  seconds[0] += tensorboard.FLUSH_EVERY_SECONDS - 1
  events.add_scalars(2, {"train/loss": 1.5})
  assert read_events(str(tmp_path)) == []
  seconds[0] += 2
  events.add_scalars(3, {"train/loss": 1.0})
  assert [step for _, step, _ in read_events(str(tmp_path))] == [1, 2, 3]
  events.close()


def test_two_event_files_opened_at_once_keep_their_own_scalars(tmp_path):
  first, second = tensorboard.EventFile(str(tmp_path)), tensorboard.EventFile(str(tmp_path))
  first.add_scalars(1, {"a": 1.0})
  second.add_scalars(2, {"b": 2.0})
  first.close()
  second.close()
  assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2
  assert sorted(read_events(str(tmp_path))) == [("a", 1, 1.0), ("b", 2, 2.0)]
