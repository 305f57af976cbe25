"""Tests for resnet_jax.reporting.metrics_buffer: device metrics read once per log line."""

import jax.numpy as jnp
import pytest

from resnet_jax.errors import NonFiniteLossError
from resnet_jax.reporting import metrics_buffer


def step_metrics(loss: float, learning_rate: float) -> dict:
  return {"train_loss": jnp.float32(loss), "train_accuracy": jnp.float32(loss / 10),
          "learning_rate": jnp.float32(learning_rate)}


def test_read_gives_means_the_last_learning_rate_and_the_rate_since_the_last_read(monkeypatch):
  seconds = [100.0]
  monkeypatch.setattr(metrics_buffer.time, "time", lambda: seconds[0])
  buffer = metrics_buffer.MetricsBuffer(batch_size=8, start_step=10)
  assert buffer.read(10) is None  # Nothing since the start.
  buffer.append(step_metrics(2.0, 0.1))
  buffer.append(step_metrics(1.0, 0.2))
  assert len(buffer) == 2
  seconds[0] += 4.0
  means = buffer.read(12)
  assert means == pytest.approx({"train_loss": 1.5, "train_accuracy": 0.15, "learning_rate": 0.2,
                                 "images_per_second": 2 * 8 / 4.0})
  assert len(buffer) == 0
  buffer.append(step_metrics(0.5, 0.3))
  seconds[0] += 2.0
  assert buffer.read(13)["images_per_second"] == pytest.approx(8 / 2.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_read_names_the_first_step_whose_loss_is_not_finite(bad):
  buffer = metrics_buffer.MetricsBuffer(batch_size=8, start_step=0)
  for loss in (1.0, bad, bad, 1.0):
    buffer.append(step_metrics(loss, 0.1))
  with pytest.raises(NonFiniteLossError, match=f"loss became {bad} at step 6$"):
    buffer.read(8)
