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
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from resnet_jax.checkpoints import checkpointing, pins, restore
from resnet_jax.train import trainer
from tests import hooks
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


def start_held(args, log_path, release, **spots) -> subprocess.Popen:
  """The real command held at spots (tests/slow_main.py: HOLD_SAVE_STEP=...) until release exists."""
  env = {**os.environ, "RELEASE": str(release), **{k: str(v) for k, v in spots.items()}}
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "slow_main.py"),
                             *map(str, args)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=env)


def wait_for(log_path, text: str, process: subprocess.Popen) -> None:
  """Waits until the running process has written text to log_path."""
  hooks.wait_until(lambda: text in log_path.read_text(), repr(text),
                   alive=lambda: process.poll() is None,
                   describe=lambda: log_path.read_text()[-3000:])


def signal_and_wait(process, sig, log_path, text: str) -> None:
  """Sends sig and waits for the line the run logs on receiving it: signals never coalesce."""
  count = log_path.read_text().count(text)
  process.send_signal(sig)
  hooks.wait_until(lambda: log_path.read_text().count(text) > count, repr(text),
                   alive=lambda: process.poll() is None,
                   describe=lambda: log_path.read_text()[-3000:])


def assert_same_state(a, b) -> None:
  chex.assert_trees_all_equal(a, b)


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


def stop_when_training(workdir, args, log, sig, release) -> str:
  """Starts the command held before its second train step, sends sig there; returns its output."""
  if release.exists():
    release.unlink()
  process = start_held(args, log, release, HOLD_AT_CALL=2)
  wait_for(log, "held: train step call 2", process)
  signal_and_wait(process, sig, log, f"{sig.name} received: saving a checkpoint")
  release.touch()
  code = process.wait(timeout=120)
  output = log.read_text()
  assert code == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], output[-3000:]
  assert "Traceback" not in output, output[-3000:]
  return output


@pytest.mark.slow
def test_sigterm_and_sigint_save_the_current_step_and_rerun_resumes(tmp_path, data):
  workdir = tmp_path / "run"
  directory = checkpointing.checkpoint_dir(str(workdir))
  # No scheduled save or eval: a checkpoint can only come from the signal.
  args = flags(workdir, data, quiet=False, num_train_steps=1000, log_every_steps=1,
               checkpoint_every_epochs=1000.0, eval_every_epochs=1000.0)
  saved = []
  for sig in (signal.SIGTERM, signal.SIGINT):  # The second run resumes what the first saved.
    output = stop_when_training(workdir, args, tmp_path / f"{sig.name}.txt", sig,
                                tmp_path / "release")
    found = re.search(rf"stopped by {sig.name} at step (\d+); checkpoint saved in (\S+): rerun "
                      "the same command to resume", output)
    assert found, output[-3000:]
    step = int(found.group(1))
    # Signalled during the second step of the session: that step is finished and saved.
    assert found.group(2) == os.path.join(directory, str(step))
    assert step == (saved[-1] if saved else 0) + 2
    if saved:
      assert f"resumed from {directory} at step {saved[-1]}" in output
    saved.append(step)
    assert assert_all_restore(workdir) == saved and not unfinished_saves(workdir)


@pytest.mark.slow
def test_repeated_sigterm_during_a_save_finishes_it_and_rerun_equals_an_uninterrupted_run(
    trained, tmp_path, data):
  workdir, log, release = tmp_path / "run", tmp_path / "log.txt", tmp_path / "release"
  args = flags(workdir, data, quiet=False, num_epochs=2.0, eval_every_epochs=2.0)  # As `trained`.
  # The save of step 3 waits, all written but not renamed into place, until released.
  process = start_held(args, log, release, HOLD_SAVE_STEP=3)
  wait_for(log, "held: save of step 3", process)
  assert unfinished_saves(workdir)  # Signalled while the save is under way, twice (as SLURM can).
  signal_and_wait(process, signal.SIGTERM, log, "SIGTERM received: saving a checkpoint")
  signal_and_wait(process, signal.SIGTERM, log,
                  "SIGTERM received again: ignored, the run is already stopping")
  release.touch()
  code = process.wait(timeout=120)
  output = log.read_text()
  assert code == 143 and "Traceback" not in output, output[-3000:]
  directory = checkpointing.checkpoint_dir(str(workdir))
  found = re.search(rf"stopped by SIGTERM at step (\d+); checkpoint saved in {directory}/(\d+): "
                    "rerun the same command to resume\n", output)
  assert found and found.group(1) == found.group(2), output[-3000:]
  step = int(found.group(1))
  # The save under way was finished, and the stop's own one too.
  assert not unfinished_saves(workdir)
  assert assert_all_restore(workdir) == sorted({3, step})
  assert not (workdir / "run.lock").exists()

  result = run(args, check=0)
  assert f"resumed from {directory} at step {step}" in result.stderr
  assert_same_state(restored(trained, 6), restored(workdir, 6))


@pytest.mark.slow
def test_ctrl_c_three_times_aborts_a_save_and_keeps_the_last_complete_checkpoint(
    trained, tmp_path, data):
  workdir, log = tmp_path / "run", tmp_path / "log.txt"
  args = flags(workdir, data, quiet=False, num_epochs=2.0, eval_every_epochs=2.0)  # As `trained`.
  # The last save never finishes: released by a file that never appears.
  process = start_held(args, log, tmp_path / "never", HOLD_SAVE_STEP=6)
  wait_for(log, "held: save of step 6", process)
  signal_and_wait(process, signal.SIGINT, log, "SIGINT received: saving a checkpoint")
  signal_and_wait(process, signal.SIGINT, log, "press Ctrl-C 1 more time to abort without saving")
  process.send_signal(signal.SIGINT)
  code = process.wait(timeout=120)  # Exits with the save still held: it did not wait for it.
  output = log.read_text()
  assert code == 130 and "Traceback" not in output, output[-3000:]
  directory = checkpointing.checkpoint_dir(str(workdir))
  assert output.rstrip().split("\n")[-1] == (
      f"error: interrupted without saving; the last complete checkpoint, {directory}/3, is "
      "intact: rerun the same command to resume")
  assert unfinished_saves(workdir) and assert_all_restore(workdir) == [3]
  assert not (workdir / "run.lock").exists()

  result = run(args, check=0)  # Deletes the unfinished save, resumes from step 3.
  assert f"resumed from {directory} at step 3" in result.stderr
  assert not unfinished_saves(workdir) and assert_all_restore(workdir) == [3, 6]
  assert_same_state(restored(trained, 6), restored(workdir, 6))


@pytest.mark.slow
def test_ctrl_c_while_setting_up_or_compiling_the_first_step_is_a_clean_stop(
    trained, tmp_path, data):
  workdir = tmp_path / "run"
  args = flags(workdir, data, quiet=False, num_epochs=2.0, eval_every_epochs=2.0)  # As `trained`.
  outputs = {}
  # While compiling the initialiser and the train step's wrapper, then the train step.
  for spot, hold, received in (
      ("set-up", {"HOLD_SETUP": 1}, "SIGINT received during set-up"),
      ("train step call 1", {"HOLD_AT_CALL": 1}, "SIGINT received: saving a checkpoint")):
    log, release = tmp_path / f"{spot}.txt", tmp_path / f"release {spot}"
    process = start_held(args, log, release, **hold)
    wait_for(log, f"held: {spot}", process)
    signal_and_wait(process, signal.SIGINT, log, received)
    release.touch()
    code = process.wait(timeout=120)
    outputs[spot] = output = log.read_text()
    assert code == 130 and "Traceback" not in output, output[-3000:]
    assert "error:" not in output, output[-3000:]
    if spot == "set-up":
      assert ("stopped by SIGINT during set-up, before training: nothing was written: rerun the "
              "same command to start (or resume)") in output
      assert not workdir.exists()
  directory = checkpointing.checkpoint_dir(str(workdir))
  assert (f"stopped by SIGINT at step 1; checkpoint saved in {directory}/1: rerun the same "
          "command to resume") in outputs["train step call 1"]
  assert assert_all_restore(workdir) == [1]

  result = run(args, check=0)
  assert f"resumed from {directory} at step 1" in result.stderr
  assert_same_state(restored(trained, 6), restored(workdir, 6))


# SIGKILL -----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_save_leaves_complete_checkpoints_and_rerun_resumes_keeping_few(
    trained, tmp_path, data):
  workdir, log = copy_of(trained, tmp_path), tmp_path / "log.txt"
  # A save at every step (0.34 epoch = 1 step); the one of step 8 is held half done.
  args = flags(workdir, data, num_epochs=4.0, eval_every_epochs=2.0,
               checkpoint_every_epochs=0.34, log_every_steps=1)
  process = start_held(args, log, tmp_path / "never", HOLD_SAVE_STEP=8)
  wait_for(log, "held: save of step 8", process)
  assert unfinished_saves(workdir)
  process.kill()
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]

  steps = assert_all_restore(workdir)  # What the kill interrupted is not among them.
  assert steps[-1] == 7, steps  # The save of step 8 was left unfinished.
  assert unfinished_saves(workdir)
  directory = checkpointing.checkpoint_dir(str(workdir))

  # The rerun keeps one latest checkpoint besides the best (by eval accuracy, now every epoch).
  result = run(flags(workdir, data, quiet=False, num_epochs=4.0, eval_every_epochs=1.0,
                     checkpoint_every_epochs=0.34, log_every_steps=1, keep_checkpoints=1), check=0)
  assert f"resumed from {directory} at step 7" in result.stderr
  assert not unfinished_saves(workdir)
  evals = {r["step"]: r["eval_accuracy"] for r in map(json.loads, (
      workdir / "metrics.jsonl").read_text().splitlines()) if "eval_accuracy" in r}
  best_steps = {step for step, accuracy in evals.items() if accuracy == max(evals.values())}
  steps = assert_all_restore(workdir)
  assert 12 in steps and len(steps) <= 2 and set(steps) - {12} <= best_steps, (steps, evals)
  assert sorted(n for n in os.listdir(workdir / "checkpoints") if not n.startswith(".")) == sorted(
      map(str, steps))
  assert not os.listdir(workdir / "checkpoints" / pins.DELETED)  # Pruned, then deleted.


# Two runs, and readers, on one workdir -------------------------------------------


@pytest.mark.slow
def test_second_run_on_a_workdir_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path, data):
  workdir = tmp_path / "run"
  args = flags(workdir, data, quiet=False, num_train_steps=1000, log_every_steps=1,
               eval_every_epochs=1000.0)
  # Held before its fifth step until killed: alive, holding the lock, all along.
  first = start_held(args, tmp_path / "first.txt", tmp_path / "never", HOLD_AT_CALL=5)
  wait_for(tmp_path / "first.txt", "held: train step call 5", first)

  second = run(args)  # The same job, submitted twice.
  holder = json.loads((workdir / "run.lock").read_text())
  assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
  lock = workdir / "run.lock"
  assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
  assert second.stderr.strip().split("\n")[-1] == (
      f"error: workdir {workdir} is in use by another run (pid {first.pid} on host "
      f"{holder['host']}, since {holder['started']}): wait for it to end or stop it, or pass "
      f"another --workdir; if that run is no longer running (its node crashed), delete {lock} "
      "and rerun")

  first.kill()  # Dies holding the lock, as on a node that crashed.
  first.wait(timeout=60)
  assert json.loads(lock.read_text()) == holder
  lines = (workdir / "metrics.jsonl").read_text().split("\n")[:-1]  # Less a torn last line.
  steps = [json.loads(line)["step"] for line in lines if "train_loss" in line]
  assert steps == list(range(1, len(steps) + 1))  # Each step logged once, by the first run alone.
  # Killed mid-run: the resume starts from the newest intact step.
  with checkpoints(workdir) as manager:
    latest = manager.restore_newest_intact()[0]
  result = run(flags(workdir, data, quiet=False, num_train_steps=latest + 1, log_every_steps=1,
                     eval_every_epochs=1000.0), check=0)
  assert (f"took over the lock {lock} of a run that is no longer running (pid {first.pid} on "
          f"host {holder['host']}, since {holder['started']})") in result.stderr
  directory = checkpointing.checkpoint_dir(str(workdir))
  assert f"resumed from {directory} at step {latest}" in result.stderr
  assert not lock.exists()


@pytest.mark.slow
def test_eval_and_predict_in_a_loop_while_training_prunes_each_step_they_read(
    tmp_path, data, caplog, monkeypatch):
  workdir = tmp_path / "run"
  directory = checkpointing.checkpoint_dir(str(workdir))
  image = tmp_path / "image.npy"
  np.save(image, np.zeros((16, 16, 3), np.uint8))
  # A save after every step, one kept and no eval: the step a reader picks is pruned by the
  # next save. Each reader holds its pin until that has happened, then reads.
  args = flags(workdir, data, num_train_steps=100000, checkpoint_every_epochs=0.34,
               keep_checkpoints=1, eval_every_epochs=100000.0)
  training = start(args, tmp_path / "train.txt")
  readers = {}
  try:
    hooks.wait_until(lambda: os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(
        directory)), "a first checkpoint", alive=lambda: training.poll() is None)
    for i in range(3):
      for program, reader_args in (("resnet_jax.main", [f"--workdir={workdir}", "--mode=eval",
                                                        "--quiet"]),
                                   ("resnet_jax.predict", [f"--workdir={workdir}", image])):
        env = {**os.environ, "HOLD_PIN": "pruned", "RUN_MODULE": program}
        readers[f"{program} {i}"] = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "slow_main.py"), *map(str, reader_args)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Meanwhile what they read, in this process, the same way.
    caplog.set_level("INFO")
    monkeypatch.setattr(pins, "pinned", hooks.held_pin(pins.pinned, "pruned", None))
    steps = [restore.load_variables(str(workdir)).step for _ in range(3)]
    outputs = {name: reader.communicate(timeout=300) for name, reader in readers.items()}

    # A reader killed while it holds a pin: the training run removes the pin at its next save.
    killed, log = start_held([f"--workdir={workdir}", "--mode=eval", "--quiet"],
                             tmp_path / "killed.txt", tmp_path / "never", HOLD_PIN="release"), (
        tmp_path / "killed.txt")
    wait_for(log, "held: pinned step", killed)
    assert os.listdir(os.path.join(directory, pins.READERS))
    killed.kill()
    killed.wait(timeout=60)
    hooks.wait_until(lambda: not os.path.exists(os.path.join(directory, pins.READERS)) or not
                     os.listdir(os.path.join(directory, pins.READERS)),
                     "the killed reader's pin removed", alive=lambda: training.poll() is None)
    assert training.poll() is None, (tmp_path / "train.txt").read_text()[-3000:]
  finally:
    for reader in readers.values():
      if reader.poll() is None:
        reader.kill()
    training.send_signal(signal.SIGTERM)
    training.wait(timeout=120)
  assert steps == sorted(steps) and steps[-1] > steps[0]
  messages = [r.getMessage() for r in caplog.records]
  assert not [m for m in messages if "damaged" in m], messages
  for name, (stdout, stderr) in outputs.items():
    assert readers[name].returncode == 0, (name, stderr[-3000:])
    assert "damaged" not in stderr and "Traceback" not in stderr, (name, stderr[-3000:])
    held = re.search(r"held: pinned step (\d+)\nreleased: pinned step (\d+)\n", stderr)
    assert held and held.group(1) == held.group(2), (name, stderr[-3000:])
    if name.startswith("resnet_jax.main"):  # Evaluated the step it pinned, which was pruned.
      assert re.match(rf"checkpoint {directory}/{held.group(1)} \(step {held.group(1)}\) on "
                      "test: accuracy", stdout), (name, stdout)
    else:
      assert stdout.startswith(f"{image}\n  "), (name, stdout)
      assert not os.path.exists(os.path.join(directory, held.group(1)))


# Torn and missing files -----------------------------------------------------------


@pytest.mark.slow
def test_torn_metrics_line_is_repaired_and_the_summary_agrees_with_the_checkpoints(
    trained, tmp_path, data):
  workdir = copy_of(trained, tmp_path)
  metrics = workdir / "metrics.jsonl"
  torn = '{"step": 7, "epoch": 2.3333, "train_lo'  # A run killed while writing step 7.
  with open(metrics, "a") as f:
    f.write(torn)
  result = run(flags(workdir, data, quiet=False, num_epochs=3.0, eval_every_epochs=1.0,
                     log_every_steps=1), check=0)
  assert (f"{metrics} ended in a torn line (a run killed while writing it): removed it"
          in result.stderr)
  records = [json.loads(line) for line in metrics.read_text().splitlines()]  # Every line whole.
  assert [r["step"] for r in records if "train_loss" in r][-3:] == [7, 8, 9]
  with checkpoints(workdir) as manager:
    saved = {step: (manager.manager.metrics(step) or {}).get("eval_accuracy")
             for step in manager.steps()}
    best = manager.best_step()
  assert saved[9] == [r for r in records if "eval_accuracy" in r][-1]["eval_accuracy"]
  rows = dict(re.findall(r"^  (final eval accuracy|best eval accuracy|best checkpoint)\s+(.*)$",
                         result.stdout, re.M))
  assert rows["final eval accuracy"].startswith(f"{100 * saved[9]:.2f}%  (step 9, loss ")
  assert rows["best eval accuracy"] == f"{100 * saved[best]:.2f}%  (step {best})"
  assert rows["best checkpoint"] == f"{workdir}/checkpoints/{best}"


def test_without_config_json_eval_reads_the_checkpoints_config_and_resume_checks_it(
    trained, tmp_path, data):
  workdir = copy_of(trained, tmp_path)
  os.remove(workdir / "config.json")
  result = run([f"--workdir={workdir}", "--mode=eval", "--quiet"], check=0)
  evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if "eval_accuracy" in line]
  assert result.stdout.startswith(f"checkpoint {workdir}/checkpoints/6 (step 6) on test: accuracy "
                                  f"{100 * evals[-1]['eval_accuracy']:.2f}% over 48 examples")

  result = run(flags(workdir, data, num_epochs=3.0, width=8))
  assert result.returncode == 2 and "damaged" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().split("\n")[-1] == (
      f"error: workdir {workdir} holds a run with other settings (width: saved 4, requested 8): "
      "resume it with its own settings, or pass a new --workdir for a fresh run")
  assert assert_all_restore(workdir) == [3, 6] and not (workdir / "damaged_checkpoints").exists()


@pytest.mark.slow
def test_non_finite_loss_on_a_fresh_workdir_says_nothing_was_saved_on_its_own_line(tmp_path, data):
  workdir = tmp_path / "run"
  result = run(flags(workdir, data, quiet=False, learning_rate="inf", log_every_steps=1))
  assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-3000:]
  # Split at newlines alone: the progress bar redraws its line with carriage returns.
  errors = [line for line in result.stderr.split("\n") if "error:" in line]
  assert errors == [
      f"error: loss became nan at step 2; no checkpoint had been saved in "
      f"{workdir / 'checkpoints'} yet: lower --config.learning_rate or check the data, then "
      "rerun to resume"], result.stderr[-3000:]
  assert not glob.glob(str(workdir / "checkpoints" / "*"))


# Paths ---------------------------------------------------------------------------


def test_paths_that_name_a_file_are_one_line_errors(trained, tmp_path, data):
  from resnet_jax.interop import export
  file = tmp_path / "notes.txt"
  file.write_text("not a folder")
  weights = tmp_path / "weights.safetensors"
  export.write_state_dict(export.to_torch_state_dict(
      *restore.load_variables(str(trained))[:2])[0], str(weights))
  image = tmp_path / "image.npy"
  np.save(image, np.zeros((8, 8, 3), np.uint8))
  commands = {
      "init_checkpoint": ("resnet_jax.main", flags(tmp_path / "fine", data, init_checkpoint=file)),
      "eval": ("resnet_jax.main", [f"--workdir={file}", "--mode=eval"]),
      "predict --workdir": ("resnet_jax.predict", [f"--workdir={file}", image]),
      "predict --checkpoint": ("resnet_jax.predict", [f"--checkpoint={file}", image]),
      "convert --output": ("resnet_jax.convert", [f"--torch_checkpoint={weights}",
                                                  f"--output={file}"]),
  }
  processes = {name: subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, (module, args) in commands.items()}
  expected = {
      "init_checkpoint": f"checkpoint path {file} is a file, not a folder: pass a workdir, its "
                         "checkpoints/ folder, or one checkpoint step's folder",
      "eval": f"--workdir={file} is a file, not a folder: pass the workdir of a training run",
      "predict --workdir": f"--workdir={file} is a file, not a folder: pass the workdir",
      "predict --checkpoint": f"--checkpoint={file} is a file, not a folder: pass the workdir",
      "convert --output": f"--output={file} is a file, not a folder: pass a new directory",
  }
  for name, process in processes.items():
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and "Traceback" not in stderr, (name, stderr[-3000:])
    last = stderr.strip().split("\n")[-1]
    assert last.startswith(f"error: {expected[name]}"), (name, last)
  assert file.read_text() == "not a folder" and not (tmp_path / "fine").exists()


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


@pytest.mark.slow
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


@pytest.mark.slow
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
  chex.assert_trees_all_equal(before, restored(workdir, 6))


# Disk ------------------------------------------------------------------------------


# The command with shutil.disk_usage replaced: "plenty" stands for a disk that
# fills between the free-space check and the write; "none_after_first" reports
# a full disk once one checkpoint exists. Where no tmpfs can be mounted,
# "enospc_after_first" also makes every save after the first fail the way
# TensorStore reports a full disk (os_error_code=28, ENOSPC).
DISK_USAGE_WRAPPER = """
import collections, os, runpy, shutil, sys
import orbax.checkpoint as ocp
mode = sys.argv.pop(1)
real_disk_usage, Usage = shutil.disk_usage, collections.namedtuple("Usage", "total used free")
def disk_usage(path):
  if mode in ("plenty", "enospc_after_first"):
    return Usage(1 << 40, 0, 1 << 40)
  if mode == "none_after_first" and any(n.isdigit() for n in os.listdir(path)):
    return Usage(1 << 20, 1 << 20, 0)
  return real_disk_usage(path)
shutil.disk_usage = disk_usage
real_save = ocp.CheckpointManager.save
def save(self, step, *args, **kwargs):
  if mode == "enospc_after_first" and self.all_steps():
    os.makedirs(os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-1"))
    raise ValueError("Error writing local file: [os_error_code=28] No space left on device")
  return real_save(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
runpy.run_module("resnet_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def small_disk(tmp_path):
  """A 600 KiB tmpfs, room for one tiny checkpoint but not two; None where mounting is refused."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  if os.environ.get("RESNET_JAX_TEST_NO_TMPFS"):  # To run the simulated full disk here too.
    yield None
    return
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount_point)],
                             capture_output=True).returncode == 0
  except OSError:
    mounted = False
  yield mount_point if mounted else None
  if mounted:
    subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before_save", "during_save"])
def test_full_disk_is_one_line_error_and_earlier_checkpoints_stay(tmp_path, data, small_disk, when):
  workdir = (small_disk or tmp_path) / "run"
  if small_disk:
    mode = {"during_save": "plenty", "before_save": "real"}[when]
  else:  # No tmpfs allowed: the full disk is simulated.
    mode = {"during_save": "enospc_after_first", "before_save": "none_after_first"}[when]
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


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_other_seed_differs(tmp_path, data):
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    config = tiny_config(seed=seed, data_dir=str(data), **CONSTANT_LR)
    trainer.train_and_evaluate(config, str(tmp_path / name), quiet=True)

  def history(name):  # Every metric but the timings.
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    timings = ("images_per_second", "wall_time_s", "train_time_s", "compile_time_s")
    return [{k: v for k, v in json.loads(line).items()
             if k not in timings and not k.startswith("time_to_")} for line in lines]

  assert history("a") == history("b")
  assert history("a") != history("c")
  a, b, c = (restored(tmp_path / name) for name in "abc")
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a["params"]["conv1"]["kernel"], c["params"]["conv1"]["kernel"])
