"""Step metrics held on device between log intervals, then read in one transfer."""

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from resnet_jax.errors import NonFiniteLossError


class MetricsBuffer:
  """Step metrics held on device between log intervals, then read at once.

  The loop never waits on the device between reads: `append` keeps the
  step's metrics as device arrays; `read` transfers all of them (one sync),
  checks every loss for NaN/Inf and returns their means with the rate of
  images per second since the previous read.
  """

  def __init__(self, batch_size: int, start_step: int):
    self.batch_size = batch_size
    self._pending: list[Mapping[str, Any]] = []
    self._since_time, self._since_step = time.time(), start_step

  def append(self, metrics: Mapping[str, Any]) -> None:
    self._pending.append(metrics)

  def __len__(self) -> int:
    return len(self._pending)

  def read(self, step: int) -> dict[str, float] | None:
    """Means over the steps up to `step` since the last read; None when there were none.

    Raises NonFiniteLossError naming the first step whose loss is NaN or Inf.
    """
    if not self._pending:
      return None
    import jax  # Lazy: the reporting package reads metrics back without JAX.
    values, self._pending = jax.device_get(self._pending), []
    first = step - len(values) + 1
    for offset, record in enumerate(values):
      loss = float(record["train_loss"])
      if not math.isfinite(loss):
        raise NonFiniteLossError(f"loss became {loss} at step {first + offset}")
    now = time.time()
    means = {k: float(np.mean([r[k] for r in values])) for k in values[-1] if k != "learning_rate"}
    means["learning_rate"] = float(values[-1]["learning_rate"])
    means["images_per_second"] = ((step - self._since_step) * self.batch_size
                                  / max(now - self._since_time, 1e-9))
    self._since_time, self._since_step = now, step
    return means
