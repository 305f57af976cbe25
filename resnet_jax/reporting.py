"""Where metrics go: metrics.jsonl in the workdir (one JSON object per event)."""

import json
import os
from collections.abc import Mapping


class MetricWriter:
  """Appends one JSON line per event to <workdir>/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")

  def write(self, step: int, epoch: float, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "epoch": round(float(epoch), 4),
              **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def close(self) -> None:
    pass
