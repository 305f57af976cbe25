"""Many devices, one process: 8 CPU devices train as 1 does; checkpoints cross device counts.

Every run is the real command in a subprocess (`JAX_NUM_CPU_DEVICES` must be
set before JAX starts), on the same mock data and global batch of 16.
"""

import shutil
import subprocess
import sys

import pytest

from tests import processes
from tests.conftest import REPO, tiny_flags
from tests.processes import Run


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return tmp_path_factory.getbasetemp() / "device_runs"  # Shared with test_distributed.


@pytest.mark.slow
def test_eight_devices_train_as_one(base):
  runs = processes.train_runs(base, {"one": Run(devices=1), "eight": Run(devices=8)})
  assert processes.saved_device_count(runs["one"], 6) == 1
  assert processes.saved_device_count(runs["eight"], 6) == 8
  processes.assert_trains_as(runs["one"], runs["eight"])


@pytest.mark.slow
def test_checkpoint_restores_on_another_device_count(base):
  """Saved on 8 and resumed on 1, saved on 1 and resumed on 8: both end as if never stopped."""
  runs = processes.train_runs(base, {"one": Run(devices=1), "eight": Run(devices=8)})
  resumed = {"eight_then_one": ("eight", Run(devices=1)),
             "one_then_eight": ("one", Run(devices=8))}
  for name, (source, _) in resumed.items():
    shutil.copytree(runs[source], base / name)
    processes.truncate_to(base / name, 3)  # As if stopped right after the step-3 checkpoint.
  processes.train_runs(base, {name: run for name, (_, run) in resumed.items()})

  for name, (before, after) in {"eight_then_one": (8, 1), "one_then_eight": (1, 8)}.items():
    assert processes.saved_device_count(base / name, 3) == before
    assert processes.saved_device_count(base / name, 6) == after
    # Steps 4-6 logged once each, after 1-3: resumed, not started afresh.
    processes.assert_trains_as(runs["one"], str(base / name))


def test_batch_not_divisible_by_devices_fails_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main",
       *tiny_flags(workdir, tmp_path / "data", batch_size=12)],
      cwd=REPO, env=processes.environment(8), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      "error: batch_size 12 is not divisible by the 8 devices: use a multiple of 8, such as 8"]
  assert not workdir.exists()
