"""Shared test helpers: a tiny config, mock-data runs of the real command."""

import os
import subprocess
import sys

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for the session: subprocesses reuse compiled steps."""
  path = str(tmp_path_factory.mktemp("xla_cache"))
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield path


def tiny_config(**overrides):
  """A seconds-long config: resnet_tiny of width 4 on mock CIFAR-10."""
  from resnet_jax import default_config
  config = default_config.get_config()
  config.model = "resnet_tiny"
  config.width = 4
  config.batch_size = 16
  config.num_epochs = 1.0
  config.warmup_epochs = 0.5
  config.log_every_steps = 2
  config.learning_rate = 0.05
  config.update(overrides)
  return config


def tiny_flags(workdir, data_dir, **overrides) -> list[str]:
  """Command-line flags for a tiny run of the real command."""
  values = {"model": "resnet_tiny", "width": 4, "batch_size": 16, "num_epochs": 1.0,
            "warmup_epochs": 0.5, "log_every_steps": 2, "data_dir": str(data_dir)}
  values.update(overrides)
  return ["--config=configs/tiny.py", f"--workdir={workdir}", "--quiet"] + [
      f"--config.{k}={v}" for k, v in values.items()]


def run_main(args, mock_examples=64, timeout=300, env=None, check=None):
  """Runs the real command on mock data in a subprocess; returns CompletedProcess."""
  command = [sys.executable, os.path.join(REPO, "tests", "mock_main.py"),
             f"--mock_examples={mock_examples}", *map(str, args)]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
  if check is not None and result.returncode != check:
    raise AssertionError(f"exit {result.returncode}, expected {check}\n"
                         f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}")
  return result
