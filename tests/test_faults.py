"""Faults during a run of the real command: signals, kills, damage, NaN, full disk.

Each test checks what the user is told and that the workdir holds only
checkpoints that read back whole, from which the next run resumes. The last
test checks that runs are deterministic on CPU. The runs read mock CIFAR-10
from a data dir that already holds it decoded, as a second run on real data
would: the command itself runs, with no TFDS mock in between.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax import checkpointing, input_pipeline, trainer
from tests.conftest import REPO, damage_checkpoint, tiny_config, tiny_flags, write_mock_cifar10

MOCK_EXAMPLES = 48  # Per split: 3 steps per epoch at batch 16.
# A schedule that does not depend on the run's length: every run here compiles
# the same train step, which the session's compilation cache then holds.
CONSTANT_LR = {"lr_schedule": "constant", "warmup_epochs": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  path = tmp_path_factory.mktemp("data")
  write_mock_cifar10(str(path), MOCK_EXAMPLES)
  return path


def flags(workdir, data_dir, quiet=True, **overrides) -> list[str]:
  args = tiny_flags(workdir, data_dir, **{**CONSTANT_LR, **overrides})
  return args if quiet else [a for a in args if a != "--quiet"]


def run(args, check=None, prefix=("-m", "resnet_jax.main")) -> subprocess.CompletedProcess:
  """Runs the real command; with check, asserts its exit code."""
  result = subprocess.run([sys.executable, *prefix, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  if check is not None:
    assert result.returncode == check, f"exit {result.returncode}\n{result.stderr[-5000:]}"
  return result


def start(args, log_path) -> subprocess.Popen:
  """The real command in the background, its output going to log_path."""
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, "-m", "resnet_jax.main", *map(str, args)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)


def train_records(workdir) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip() and "train_loss" in line]


@contextlib.contextmanager
def checkpoints(workdir):
  """The workdir's checkpoints, read-only."""
  manager = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
  try:
    yield manager
  finally:
    manager.close()


def restored(workdir, step=None) -> dict:
  """The state saved at step (default: the latest), on the host."""
  with checkpoints(workdir) as manager:
    return jax.device_get(manager.restore(manager.latest_step() if step is None else step))


def unfinished_saves(workdir) -> list[str]:
  return glob.glob(os.path.join(checkpointing.checkpoint_dir(str(workdir)), "*.orbax-checkpoint-tmp*"))


def assert_all_restore(workdir) -> list[int]:
  """Every checkpoint in workdir reads back, matches its checksums and is finite; returns the steps."""
  with checkpoints(workdir) as manager:
    steps = manager.steps()
  for step in steps:
    for leaf in jax.tree.leaves(restored(workdir, step)):
      assert np.all(np.isfinite(leaf)), f"checkpoint {step} holds NaN or Inf"
  return steps


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
  """Two epochs of resnet_tiny on mock data: checkpoints 3 and 6, only 6 evaluated (the best)."""
  base = tmp_path_factory.mktemp("trained")
  run(flags(base / "run", data, num_epochs=2.0, eval_every_epochs=2.0), check=0)
  assert assert_all_restore(base / "run") == [3, 6]
  return base / "run"


def copy_of(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


# Signals ---------------------------------------------------------------------


def stop_when_training(workdir, args, log, sig, after_step=0) -> str:
  """Starts the command, sends sig once it has logged a step past after_step; returns its output."""
  process = start(args, log)
  deadline = time.time() + 300
  while (not any(r["step"] > after_step for r in train_records(workdir))
         and process.poll() is None and time.time() < deadline):
    time.sleep(0.05)
  assert process.poll() is None, log.read_text()[-3000:]
  process.send_signal(sig)
  code = process.wait(timeout=120)
  output = log.read_text()
  assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  return output


def test_sigterm_and_sigint_save_the_current_step_and_rerun_resumes(tmp_path, data):
  workdir = tmp_path / "run"
  directory = checkpointing.checkpoint_dir(str(workdir))
  # No scheduled save or eval: a checkpoint can only come from the signal.
  args = flags(workdir, data, quiet=False, num_train_steps=1000, log_every_steps=1,
               checkpoint_every_epochs=1000.0, eval_every_epochs=1000.0)
  saved = []
  for sig in (signal.SIGTERM, signal.SIGINT):  # The second run resumes what the first saved.
    output = stop_when_training(workdir, args, tmp_path / f"{sig.name}.txt", sig,
                                after_step=saved[-1] if saved else 0)
    found = re.search(rf"stopped by {sig.name} at step (\d+); checkpoint saved in (\S+): rerun "
                      "the same command to resume", output)
    assert found, output[-3000:]
    step = int(found.group(1))
    assert found.group(2) == os.path.join(directory, str(step)) and 0 < step < 1000
    if saved:
      assert f"resumed from {directory} at step {saved[-1]}" in output
      assert step > saved[-1]
    saved.append(step)
    assert assert_all_restore(workdir) == saved and not unfinished_saves(workdir)


# SIGKILL -----------------------------------------------------------------------


def test_sigkill_mid_save_leaves_complete_checkpoints_and_rerun_resumes_keeping_few(
    trained, tmp_path, data):
  workdir, log = copy_of(trained, tmp_path), tmp_path / "log.txt"
  # A save at every step (0.34 epoch = 1 step), so that the kill can land inside one.
  args = flags(workdir, data, num_epochs=4.0, eval_every_epochs=2.0,
               checkpoint_every_epochs=0.34, log_every_steps=1)
  process = start(args, log)
  deadline = time.time() + 300
  while process.poll() is None and time.time() < deadline:
    if unfinished_saves(workdir):
      process.kill()
      break
    time.sleep(0.002)
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]

  steps = assert_all_restore(workdir)  # Whatever the kill interrupted, these read back whole.
  latest = steps[-1]
  assert latest >= 6
  directory = checkpointing.checkpoint_dir(str(workdir))
  if not unfinished_saves(workdir):  # The kill fell between saves: leave what a killed save leaves.
    half = os.path.join(directory, f"{latest + 1}.orbax-checkpoint-tmp")
    shutil.copytree(os.path.join(directory, str(latest)), half)
    damage_checkpoint(half, "truncated")

  # The rerun keeps one latest checkpoint besides the best (by eval accuracy, now every epoch).
  result = run(flags(workdir, data, quiet=False, num_epochs=4.0, eval_every_epochs=1.0,
                     checkpoint_every_epochs=0.34, log_every_steps=1, keep_checkpoints=1), check=0)
  assert f"resumed from {directory} at step {latest}" in result.stderr
  assert not unfinished_saves(workdir)
  evals = {r["step"]: r["eval_accuracy"] for r in map(json.loads, (
      workdir / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r}
  best_steps = {step for step, accuracy in evals.items() if accuracy == max(evals.values())}
  steps = assert_all_restore(workdir)
  assert 12 in steps and len(steps) <= 2 and set(steps) - {12} <= best_steps, (steps, evals)
  assert sorted(os.listdir(workdir / "checkpoints")) == sorted(map(str, steps))


# Damage on disk ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "deleted", "changed_bytes"])
def test_damaged_file_fails_restore(trained, tmp_path, how):
  workdir = copy_of(trained, tmp_path)
  damage_checkpoint(workdir / "checkpoints" / "6", how)
  # Orbax notices a short or missing file; changed bytes only the checksums catch.
  expected = checkpointing.DamagedCheckpointError if how == "changed_bytes" else Exception
  with checkpoints(workdir) as manager:
    with pytest.raises(expected):
      manager.restore(6)
    assert manager.restore_newest_intact()[0] == 3


def test_damaged_checkpoint_eval_falls_back_and_resume_moves_it_aside(trained, tmp_path, data):
  workdir = copy_of(trained, tmp_path)
  directory = checkpointing.checkpoint_dir(str(workdir))
  damage_checkpoint(os.path.join(directory, "6"), "truncated")

  result = run([f"--workdir={workdir}", "--mode=eval", "--quiet"], check=0)
  assert f"checkpoint {directory}/6 is damaged and was skipped" in result.stderr
  assert "the best checkpoint (step 6) is damaged; evaluating step 3 instead" in result.stderr
  assert f"checkpoint {directory}/3 (step 3)" in result.stdout
  assert json.loads((workdir / "eval.json").read_text())["step"] == 3

  result = run(flags(workdir, data, quiet=False, num_epochs=3.0, eval_every_epochs=2.0), check=0)
  moved = workdir / "damaged_checkpoints" / "6"
  assert f"checkpoint {directory}/6 is damaged and was skipped" in result.stderr
  assert f"damaged checkpoint {directory}/6 moved to {moved}" in result.stderr
  assert f"resumed from {directory} at step 3" in result.stderr
  assert moved.is_dir()  # Kept for a look, out of the way of the new step 6.
  assert assert_all_restore(workdir) == [3, 6, 9]


# NaN / Inf -------------------------------------------------------------------------


@pytest.mark.parametrize("found_in,checkpoint_every_epochs,message", [
    # The update after step 7 makes the loss NaN, seen when step 8 is logged.
    ("loss", 1.0, r"loss became nan at step 8"),
    # With a save after every step, the Inf weights of step 7 are caught before the save.
    ("parameters", 0.34, r"the parameters became NaN or Inf at step 7"),
])
def test_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(
    trained, tmp_path, data, found_in, checkpoint_every_epochs, message):
  workdir = copy_of(trained, tmp_path)
  before = restored(workdir, 6)
  # Resumes at step 6; an infinite learning rate ruins the next update.
  result = run(flags(workdir, data, num_epochs=3.0, learning_rate="inf", log_every_steps=1,
                          checkpoint_every_epochs=checkpoint_every_epochs))
  assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert re.fullmatch(rf"error: {message}; the last saved checkpoint in {workdir / 'checkpoints'} "
                      r"is unchanged: lower --config.learning_rate .*", last), last
  assert assert_all_restore(workdir) == [3, 6]
  jax.tree.map(np.testing.assert_array_equal, before, restored(workdir, 6))


# Disk ------------------------------------------------------------------------------


# The command with shutil.disk_usage replaced: "plenty" stands for a disk that
# fills between the free-space check and the write; "none_after_first" reports
# a full disk once one checkpoint exists, where no tmpfs can be mounted.
DISK_USAGE_WRAPPER = """
import collections, os, runpy, shutil, sys
mode = sys.argv.pop(1)
real_disk_usage, Usage = shutil.disk_usage, collections.namedtuple("Usage", "total used free")
def disk_usage(path):
  if mode == "plenty":
    return Usage(1 << 40, 0, 1 << 40)
  if mode == "none_after_first" and any(n.isdigit() for n in os.listdir(path)):
    return Usage(1 << 20, 1 << 20, 0)
  return real_disk_usage(path)
shutil.disk_usage = disk_usage
runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def small_disk(tmp_path):
  """A 600 KiB tmpfs, room for one tiny checkpoint but not two; None where mounting is refused."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount_point)],
                             capture_output=True).returncode == 0
  except OSError:
    mounted = False
  yield mount_point if mounted else None
  if mounted:
    subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.parametrize("when", ["before_save", "during_save"])
def test_full_disk_is_one_line_error_and_earlier_checkpoints_stay(tmp_path, data, small_disk, when):
  if small_disk is None and when == "during_save":
    pytest.skip("a write that fails midway needs a small tmpfs, and mounting one is not allowed here")
  workdir = (small_disk or tmp_path) / "run"
  mode = {"during_save": "plenty", "before_save": "real" if small_disk else "none_after_first"}[when]
  result = run([mode, *flags(workdir, data, num_epochs=2.0)], prefix=("-c", DISK_USAGE_WRAPPER))
  context = result.stderr[-3000:]
  assert result.returncode == 2 and "Traceback" not in result.stderr, context
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, context
  directory = checkpointing.checkpoint_dir(str(workdir))
  if when == "before_save":
    assert errors[0].startswith(f"error: no room for checkpoint {directory}/6: "), context
    assert result.stderr.strip().splitlines()[-1] == errors[0]
  else:
    assert errors[0].startswith(f"error: could not write checkpoint {directory}/6 (No space left "
                                "on device)"), context
  assert "the latest at step 3: free disk space (or lower --config.keep_checkpoints" in errors[0]
  assert assert_all_restore(workdir) == [3]


# Determinism -------------------------------------------------------------------------


def test_same_seed_is_bit_identical_and_other_seed_differs(tmp_path, data):
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    config = tiny_config(seed=seed, data_dir=str(data), **CONSTANT_LR)
    trainer.train_and_evaluate(config, str(tmp_path / name), quiet=True)

  def history(name):  # Every metric but the timings.
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items()
             if k not in ("images_per_second", "wall_time_s")} for line in lines]

  assert history("a") == history("b")
  assert history("a") != history("c")
  a, b, c = (restored(tmp_path / name) for name in "abc")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["params"]["conv1"]["kernel"], c["params"]["conv1"]["kernel"])
