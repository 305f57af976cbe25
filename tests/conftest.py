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


def resolved_config(config=None, size=16, num_train_examples=64, **overrides):
  """A config resolved as if 3-channel size x size images of 10 classes had loaded."""
  from resnet_jax import configuration
  config = config if config is not None else tiny_config()
  config.update(overrides)
  return configuration.resolve(config, {
      "num_classes": 10, "class_names": [f"class_{i}" for i in range(10)],
      "mean": (0.5,) * 3, "std": (0.25,) * 3, "input_shape": (size, size, 3),
      "num_train_examples": num_train_examples})


def write_mock_cifar10(data_dir, num_examples: int) -> None:
  """Puts mock CIFAR-10 into data_dir as the input pipeline's decoded cache, once."""
  import tensorflow_datasets as tfds
  from resnet_jax import input_pipeline
  if os.path.isdir(os.path.join(data_dir, "resnet_jax_cache")):
    return
  with tfds.testing.mock_data(num_examples=num_examples):
    for split in ("train", "test"):
      arrays, meta = input_pipeline.load_split("cifar10", split, str(data_dir))
      input_pipeline._write_cache(input_pipeline._cache_path(str(data_dir), "cifar10", split),
                                  arrays, meta)


def largest_state_file(step_dir) -> str:
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for name in names]
  return max(files, key=os.path.getsize)


def damage_checkpoint(step_dir, how: str = "truncated") -> None:
  """Damages the largest data file of a checkpoint's state."""
  path = largest_state_file(step_dir)
  if how == "truncated":  # A write cut short.
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == "deleted":
    os.remove(path)
  else:  # One flipped bit in the middle: same size, other numbers.
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))


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
