"""Runs of the real command on N CPU devices and P processes, side by side, with bounded waits.

`train_runs` starts every run it is asked for at once (the machine's cores
overlap their start-up and compilation), waits for all with one deadline,
kills them all on failure, and remembers finished runs for the session: the
single-device reference serves tests in several modules.

The data is tfds's mock CIFAR-10 (what tests/mock_main.py gives), written once
into the data_dir as the input pipeline's decoded cache: the runs then read
it without importing TensorFlow, 8 s less per process, and every process of a
run reads the same file.
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from etils import epath
import orbax.checkpoint as ocp

from resnet_jax.checkpoints import checkpointing
from tests import conftest
from tests.conftest import REPO, tiny_flags

MOCK_EXAMPLES = 48  # Per split: 3 steps per epoch at batch 16; 2 epochs, checkpoints at 3 and 6.
NUM_STEPS = 6
# Launchers set these for their tasks; inherited, they would turn a test run into a cluster job.
CLUSTER_VARIABLES = ("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_NUM_CPU_DEVICES")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training command: devices per process, processes, extra --config fields.

  With `preempt_at_call`, the last process sends itself SIGTERM when its train
  step is called that many times (tests/preempted_main.py), and every process
  is expected to save and exit 143.
  """
  devices: int = 1
  processes: int = 1
  overrides: tuple[tuple[str, object], ...] = ()
  preempt_at_call: int = 0

  @property
  def exit_code(self) -> int:
    return 143 if self.preempt_at_call else 0


def free_port() -> int:
  """A TCP port nothing listens on now (the OS picks it)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def environment(devices: int) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}
  env["JAX_NUM_CPU_DEVICES"] = str(devices)
  return env


def write_mock_cifar10(data_dir) -> None:
  conftest.write_mock_cifar10(data_dir, MOCK_EXAMPLES)


def start(workdir, data_dir, run: Run, log_prefix) -> list[subprocess.Popen]:
  """Starts the processes of one run; each one's stdout and stderr go to <log_prefix>.<i>.log."""
  fields = {"num_epochs": NUM_STEPS // 3, "log_every_steps": 1, **dict(run.overrides)}
  flags = tiny_flags(workdir, data_dir, **fields)
  if run.processes > 1:
    flags += [f"--coordinator_address=localhost:{free_port()}",
              f"--num_processes={run.processes}"]
  write_mock_cifar10(data_dir)
  procs = []
  for i in range(run.processes):
    extra = [f"--process_id={i}"] if run.processes > 1 else []
    env, command = environment(run.devices), ["-m", "resnet_jax.main"]
    if run.preempt_at_call and i == run.processes - 1:
      env["PREEMPT_AT_CALL"] = str(run.preempt_at_call)
      command = [os.path.join(REPO, "tests", "preempted_main.py")]
    log = open(f"{log_prefix}.{i}.log", "w")
    procs.append(subprocess.Popen(
        [sys.executable, *command, *flags, *extra],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    log.close()
  return procs


def kill(procs: list[subprocess.Popen]) -> None:
  for proc in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)  # Its own session: the process and its children only.
      proc.wait()


def log_tail(path, chars: int = 3000) -> str:
  with open(path, errors="replace") as f:
    return f"--- {path}\n{f.read()[-chars:]}"


def wait_all(procs: list[subprocess.Popen], logs: list[str], timeout_s: float,
             expected: list[int] | None = None) -> None:
  """Waits for every process to exit with its expected code (0); kills all at the deadline
  or the first other exit."""
  expected = expected or [0] * len(procs)
  deadline = time.time() + timeout_s
  try:
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, code) for p, code in zip(procs, expected)):
        break
      if time.time() > deadline:
        break
      time.sleep(0.5)
  finally:
    kill(procs)
  codes = [p.returncode for p in procs]
  if codes != expected:
    timed_out = time.time() > deadline
    raise AssertionError(f"exit codes {codes}, expected {expected}"
                         f"{' (killed at the deadline)' if timed_out else ''}\n"
                         + "\n".join(log_tail(log) for log in logs))


_finished: dict[str, str] = {}


def train_runs(base, runs: dict[str, Run], timeout_s: float = 360) -> dict[str, str]:
  """Workdirs of the named runs, each trained once per session; new ones run side by side."""
  os.makedirs(base, exist_ok=True)
  procs, logs, expected = [], [], []
  for name, run in runs.items():
    if name in _finished:
      continue
    started = start(os.path.join(base, name), os.path.join(base, "data"), run,
                    os.path.join(base, name))
    procs += started
    logs += [os.path.join(base, f"{name}.{i}.log") for i in range(len(started))]
    expected += [run.exit_code] * len(started)
  wait_all(procs, logs, timeout_s, expected)
  for name in runs:
    _finished.setdefault(name, os.path.join(base, name))
  return {name: _finished[name] for name in runs}


# Reading results ----------------------------------------------------------

# On 8 devices (or 2 processes x 2) each computes its shard's gradient and
# BatchNorm sums, and XLA adds the partial sums: float32 additions in another
# order. Measured after 6 steps of resnet_tiny (width 4, lr 0.05) against 1
# device, over 8 devices, 2 processes x 2 and both resumed runs: training losses
# differ by at most 2.1e-7 relative, and every array of params, batch_stats and
# opt_state by at most 2.1e-6 of its largest magnitude. The bounds sit about 5x
# above that.
LOSS_RTOL = 1e-6
STATE_RTOL = 1e-5
STATE_PARTS = ("params", "batch_stats", "opt_state")


def assert_trains_as(reference: str, workdir: str) -> None:
  """Same losses at every step and the same final state as the reference run, within tolerance."""
  expected, actual = train_losses(reference), train_losses(workdir)
  assert sorted(actual) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([actual[s] for s in sorted(actual)],
                             [expected[s] for s in sorted(actual)], rtol=LOSS_RTOL)
  (step_a, state_a), (step_b, state_b) = final_state(reference), final_state(workdir)
  assert step_a == step_b == NUM_STEPS and int(state_b["step"]) == NUM_STEPS
  for part in STATE_PARTS:
    difference = relative_difference(state_a[part], state_b[part])
    assert difference <= STATE_RTOL, f"{part} of {workdir} differs by {difference:.2e}"


def train_losses(workdir) -> dict[int, float]:
  """Step -> training loss from metrics.jsonl; asserts no step is logged twice."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for record in map(json.loads, f):
      if "train_loss" in record:
        assert record["step"] not in losses, f"step {record['step']} logged twice in {workdir}"
        losses[record["step"]] = record["train_loss"]
  return losses


def final_state(workdir) -> tuple[int, dict]:
  """(latest step, its saved state as host arrays), read on this process's devices."""
  manager = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(workdir)), read_only=True)
  step = manager.latest_step()
  return step, jax.device_get(manager.restore(step))


def saved_device_count(workdir, step: int) -> int:
  """How many devices the checkpoint of `step` was saved from, as Orbax recorded it."""
  path = epath.Path(checkpointing.checkpoint_dir(str(workdir))) / str(step) / "state"
  sharding = ocp.StandardCheckpointHandler().metadata(path).tree["step"].sharding
  return int(np.prod(sharding.shape))


def relative_difference(expected, actual) -> float:
  """The largest |actual - expected| of any array, over that array's largest |expected|."""
  def one(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(b - a)) / max(np.max(np.abs(a)), 1e-12)) if a.size else 0.0
  return max(jax.tree.leaves(jax.tree.map(one, expected, actual)))


def truncate_to(workdir, step: int) -> None:
  """Makes a finished run's workdir look as if it had stopped right after saving `step`."""
  directory = checkpointing.checkpoint_dir(str(workdir))
  for name in os.listdir(directory):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(directory, name))
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    kept = [line for line in f if json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(kept)
