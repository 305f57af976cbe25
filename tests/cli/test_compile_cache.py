"""JAX's persistent compilation cache: on by default, moved or turned off by one variable."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from resnet_jax.cli import compile_cache
from tests.conftest import REPO, run_main, tiny_flags

# Sets the cache up as the programs do, then compiles one function.
_COMPILE = ("import jax; from resnet_jax.cli import compile_cache; print(compile_cache.enable()); "
            "jax.jit(lambda x: x * 3 + 1)(2.0).block_until_ready()")


def _entries(folder) -> set[str]:
  """The cache entries JAX wrote into folder (its files end in -cache)."""
  if not os.path.isdir(folder):
    return set()
  return {name for name in os.listdir(folder) if name.endswith("-cache")}


def _compile(tmp_path, monkeypatch, **env) -> subprocess.CompletedProcess:
  # The test session's own cache is set through JAX's variable, which would win.
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  env = {**os.environ, "RESNET_JAX_CACHE": str(tmp_path / "cache"), **env}
  return subprocess.run([sys.executable, "-c", _COMPILE], cwd=REPO, env=env, text=True,
                        capture_output=True, timeout=120, check=True)


def test_on_by_default_under_the_project_cache(tmp_path, monkeypatch):
  result = _compile(tmp_path, monkeypatch)
  folder = tmp_path / "cache" / compile_cache.SUBDIR
  assert result.stdout.strip() == str(folder)
  assert _entries(folder)


def test_moved_by_the_variable(tmp_path, monkeypatch):
  result = _compile(tmp_path, monkeypatch, RESNET_JAX_COMPILATION_CACHE=str(tmp_path / "mine"))
  assert result.stdout.strip() == str(tmp_path / "mine")
  assert _entries(tmp_path / "mine")
  assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("value", ["off", "OFF"])
def test_off_writes_nothing(tmp_path, monkeypatch, value):
  result = _compile(tmp_path, monkeypatch, RESNET_JAX_COMPILATION_CACHE=value)
  assert result.stdout.strip() == "None"
  assert not (tmp_path / "cache").exists()


def test_off_wins_over_jax_own_variable(tmp_path, monkeypatch):
  result = _compile(tmp_path, monkeypatch, RESNET_JAX_COMPILATION_CACHE="off",
                    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"))
  assert result.stdout.strip() == "None"
  assert not _entries(tmp_path / "jax")


def test_jax_own_variable_is_left_alone(tmp_path, monkeypatch):
  result = _compile(tmp_path, monkeypatch, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax"),
                    RESNET_JAX_COMPILATION_CACHE=str(tmp_path / "mine"))
  assert result.stdout.strip() == str(tmp_path / "jax")
  assert _entries(tmp_path / "jax")
  assert not (tmp_path / "mine").exists() and not (tmp_path / "cache").exists()


def test_a_folder_that_cannot_be_written_costs_one_warning_not_the_run(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  result = _compile(tmp_path, monkeypatch, RESNET_JAX_COMPILATION_CACHE=str(blocker / "cache"))
  assert result.stdout.strip() == "None"
  warnings = [line for line in result.stderr.splitlines() if "compilation cache" in line]
  assert len(warnings) == 1 and str(blocker / "cache") in warnings[0], result.stderr
  assert "RESNET_JAX_COMPILATION_CACHE=off" in warnings[0]
  assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_training_and_predict_fill_it_and_a_rerun_reads_it(tmp_path, monkeypatch):
  """The real commands: a run writes its steps, the same run again finds every one of them."""
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  env = {"RESNET_JAX_CACHE": str(tmp_path / "cache")}
  folder = tmp_path / "cache" / compile_cache.SUBDIR
  flags = lambda name: tiny_flags(tmp_path / name, tmp_path / "data", num_train_steps=2)
  run_main(flags("first"), mock_examples=32, env=env, check=0)
  written = _entries(folder)
  assert written
  run_main(flags("second"), mock_examples=32, env=env, check=0)
  assert _entries(folder) == written  # Each compile was a hit: a miss would add its key.

  image = tmp_path / "image.png"
  Image.new("RGB", (16, 16), (200, 30, 90)).save(image)
  subprocess.run([sys.executable, "-m", "resnet_jax.predict", f"--workdir={tmp_path / 'first'}",
                  str(image)], cwd=REPO, env={**os.environ, **env}, text=True,
                 capture_output=True, timeout=300, check=True)
  assert _entries(folder) > written  # Predict's own compiled forward pass.
