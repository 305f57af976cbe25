"""Tests for scripts/gpu_check.py: the dry run end to end, time sharing, skips, the carried cache."""

import importlib.util
import json
import math
import os
import select
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

SCRIPTS = os.path.join(REPO, "scripts")
sys.path.insert(0, SCRIPTS)

import gpu_check  # noqa: E402  (scripts/ is not a package)
import gpu_check_prepare  # noqa: E402
import gpu_check_processes  # noqa: E402

SCRIPT = os.path.join(SCRIPTS, "gpu_check.py")
# What the check was asked to cover, in its order.
SECTIONS = ["environment", "fashion_mnist", "resnet18_step", "resnet50_step",
            "streamed_resnet50", "stablehlo"]
# CPU, one thread each, unoptimised XLA code: this run checks the plumbing, not the speed.
CPU_ENV = {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def numbers(tree) -> list[float]:
  """Every int or float anywhere in a JSON tree."""
  if isinstance(tree, dict):
    return [n for value in tree.values() for n in numbers(value)]
  if isinstance(tree, list):
    return [n for value in tree for n in numbers(value)]
  return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, str, str]:
  """One dry run of the whole check on CPU: (JSON report, Markdown file, stdout)."""
  output = tmp_path_factory.mktemp("gpu_check") / "check.json"
  result = subprocess.run([sys.executable, SCRIPT, "--dry", f"--output={output}"], cwd=REPO,
                          env={**os.environ, **CPU_ENV}, capture_output=True, text=True,
                          timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(output) as f:
    report = json.load(f)
  with open(output.with_suffix(".md")) as f:
    table = f.read()
  assert os.path.getsize(output.with_suffix(".log")) > 0
  return report, table, result.stdout


@pytest.mark.slow
def test_dry_run_records_every_section_with_figures(dry_run):
  import jax
  report, _, _ = dry_run
  assert list(report["sections"]) == SECTIONS
  assert report["versions"]["jax"] == jax.__version__
  assert report["device"].endswith(" x cpu (cpu)")
  for name, record in report["sections"].items():
    # Nothing is missing for a dry run: the stand-in data are written by the check itself,
    # and a missing PyTorch is the benchmark's own recorded reason (next test).
    assert record["status"] == "ok", (name, record.get("error"), record.get("reason"))
    assert record["rows"], name
    assert [n for n in numbers(record["figures"]) if math.isfinite(n)], name


@pytest.mark.slow
def test_dry_run_measures_what_each_section_names(dry_run):
  report, _, _ = dry_run
  sizes = gpu_check.sizes_for(dry=True)
  fm = report["sections"]["fashion_mnist"]["figures"]
  assert fm["steps_completed"] == sizes["fashion_mnist"]["flags"]["num_train_steps"]
  assert 0.0 <= fm["final_eval_accuracy"] <= 1.0 and fm["wall_time_s"] > 0
  for name in ("resnet18_step", "resnet50_step"):
    for batch in sizes[name]["batches"]:
      out = report["sections"][name]["figures"][f"batch_{batch}"]
      assert out["batch_size"] == batch and out["jax_images_per_second"] > 0
      assert out["model"] == sizes[name]["flags"]["model"]
      if importlib.util.find_spec("torch") is None:
        assert out["torch_skipped_reason"] == "torch is not installed"
      else:
        assert out["torch_images_per_second"] > 0 and out["torch_best_variant"]
  stream = report["sections"]["streamed_resnet50"]["figures"]
  assert stream["workers"] == sizes["streamed_resnet50"]["workers"]
  assert 0.0 <= stream["data_wait_fraction_median"] <= stream["data_wait_fraction_max"] <= 1.0
  assert stream["images_per_second_median"] > 0
  hlo = report["sections"]["stablehlo"]["figures"]
  for batch in sizes["stablehlo"]["batches"]:
    # The deserialized program computes what the jitted model computes.
    assert hlo[f"batch_{batch}"]["max_relative_difference"] < 1e-5
    assert hlo[f"batch_{batch}"]["ms"] > 0


@pytest.mark.slow
def test_dry_run_prints_the_markdown_table_it_writes(dry_run):
  report, table, stdout = dry_run
  assert table.strip() in stdout
  assert table.startswith("### GPU check, ")
  for name in SECTIONS:
    assert f"| {name} |" in table
  accuracy = report["sections"]["fashion_mnist"]["figures"]["final_eval_accuracy"]
  assert f"{accuracy:.2%}" in table


def test_sections_run_in_order_until_the_deadline_and_failures_stay_local():
  now = [0.0]
  spent = {"a": 30.0, "b": 50.0, "c": 10.0, "d": 10.0}
  limits, snapshots = {}, []

  def runner(name, limit):
    limits[name] = limit
    now[0] += spent[name]
    if name == "b":
      raise RuntimeError("device lost")
    return {"status": "ok", "figures": {"x": 1}}

  results = gpu_check.run_all(list(spent), {"a": 40, "b": 200, "c": 40, "d": 40}, 100, 15,
                              runner, lambda r: snapshots.append(list(r)), clock=lambda: now[0])
  assert limits == {"a": 40, "b": 70, "c": 20}  # Each: its cap or the time left, the smaller.
  assert results["a"]["status"] == "ok" and results["c"]["status"] == "ok"
  assert results["b"]["status"] == "error" and "device lost" in results["b"]["error"]
  assert results["d"]["status"] == "skipped" and "global deadline" in results["d"]["reason"]
  assert results["b"]["seconds"] == 50.0
  assert snapshots == [["a"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]]


def test_markdown_shows_errors_and_skips_in_their_rows():
  report = {"date": "2026-12-07T10:00:00+00:00", "device": "1 x NVIDIA H100 (gpu)",
            "command": "python3 scripts/gpu_check.py", "seconds": 12.0, "deadline_s": 450,
            "versions": {"jax": "0.11.2", "torch": None},
            "sections": {
                "environment": {"status": "ok", "seconds": 3.0, "rows": [["dev", "CUDA 13"]],
                                "figures": {"cpu_count": 16, "jax_cudnn": 91300}},
                "resnet18_step": {"status": "timed_out", "seconds": 9.0, "error": "stopped",
                                  "rows": [["batch 512", "1.5x"]]},
                "stablehlo": {"status": "skipped", "seconds": 0.0, "title": "export",
                              "reason": "global deadline: a|b"}}}
  lines = gpu_check.markdown(report).splitlines()
  assert lines[0] == "### GPU check, 2026-12-07: 1 x NVIDIA H100 (gpu)"
  assert "jax 0.11.2" in lines[2] and "torch" not in lines[2] and "jax_cudnn 91300" in lines[2]
  assert "16 CPUs" in lines[2]
  assert "| resnet18_step | batch 512 | 1.5x | 9 |" in lines
  assert "|  |  | timed_out: stopped |  |" in lines
  assert "| stablehlo | export | skipped: global deadline: a\\|b | 0 |" in lines


def test_a_missing_data_cache_is_a_skip_that_says_how_to_make_it(tmp_path):
  output = tmp_path / "check.json"
  result = subprocess.run([sys.executable, SCRIPT, "--sections=fashion_mnist",
                           f"--data_dir={tmp_path / 'empty'}", f"--output={output}"], cwd=REPO,
                          env={**os.environ, **CPU_ENV}, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(output.read_text())["sections"]["fashion_mnist"]
  assert record["status"] == "skipped"
  assert "--prepare" in record["reason"] and str(tmp_path / "empty") in record["reason"]


def test_every_section_has_sizes_for_the_gpu_and_the_dry_run():
  for name in gpu_check.sections.SECTIONS:
    assert "cap_s" in gpu_check.SIZES[name], name
  for name, fields in gpu_check.SIZES.items():
    for field, pair in fields.items():
      assert isinstance(pair, tuple) and len(pair) == 2, (name, field)
  full, dry = gpu_check.sizes_for(False), gpu_check.sizes_for(True)
  assert full["resnet50_step"]["batches"] == (128, 256)
  assert dry["stablehlo"]["image_size"] < full["stablehlo"]["image_size"]


def test_the_compressed_cache_loads_as_the_trainer_loads_it(tmp_path):
  from resnet_jax.data import memory
  rows = np.arange(28, dtype=np.uint8)[:, None] * np.ones((1, 28), np.uint8)
  images = np.stack([np.roll(rows, i, axis=1) for i in range(50)])[..., None]  # Compressible.
  labels = np.arange(50, dtype=np.int32) % 10
  meta = {"dataset": "fashion_mnist", "split": "train", "version": "3.0.1", "num_classes": 10,
          "class_names": [f"c{i}" for i in range(10)]}
  source = str(tmp_path / "tfds")
  memory._write_cache(memory._cache_path(source, "fashion_mnist", "train"),
                      memory.Split(images, labels), meta)
  written = gpu_check_prepare.compress_cache(source, str(tmp_path / "carry"))
  assert written == [memory._cache_path(str(tmp_path / "carry"), "fashion_mnist", "train")]
  assert os.path.getsize(written[0]) < os.path.getsize(
      memory._cache_path(source, "fashion_mnist", "train"))
  split, loaded_meta = memory.load_split("fashion_mnist", "train", data_dir=str(tmp_path / "carry"))
  np.testing.assert_array_equal(split.images, images)
  np.testing.assert_array_equal(split.labels, labels)
  assert loaded_meta["class_names"] == meta["class_names"]
  assert memory.cached_shape("fashion_mnist", "train", str(tmp_path / "carry")) == ((28, 28, 1), 50)


def test_a_command_past_its_limit_is_killed_with_the_processes_it_started(tmp_path,
                                                                           monkeypatch):
  ready = tmp_path / "ready"
  os.mkfifo(ready)
  # The grandchild starts a session of its own, as benchmark.py's PyTorch child does; both wait
  # for a signal that never comes, as a hung program would.
  script = ("import signal, subprocess, sys\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'],"
            " start_new_session=True)\n"
            "print('started', flush=True)\n"
            f"open({str(ready)!r}, 'w').write(str(child.pid))\n"
            "signal.pause()\n")
  communicate = subprocess.Popen.communicate
  grandchild = []

  def limit_reached_once_started(process, timeout=None):
    """The first wait ends at its limit only once the command is running with its grandchild:
    the order of events is made here, not left to how fast a loaded machine starts them."""
    if not grandchild:
      with open(ready) as f:  # Opens when the command opens it to write: it has started.
        grandchild.append(int(f.read()))
      raise subprocess.TimeoutExpired(process.args, timeout)
    return communicate(process, timeout=timeout)

  monkeypatch.setattr(subprocess.Popen, "communicate", limit_reached_once_started)
  try:
    finished = gpu_check_processes.run([sys.executable, "-c", script], timeout_s=60)
    assert finished.timed_out and "started" in finished.stdout
    with pytest.raises(TimeoutError, match="limit"):
      finished.check("the sleeper")
    try:
      pidfd = os.pidfd_open(grandchild[0])
    except ProcessLookupError:
      return  # Killed and already reaped.
    try:  # Readable once the process has ended; the bound only keeps a failure from hanging.
      assert select.select([pidfd], [], [], 60)[0], f"process {grandchild[0]} is still running"
    finally:
      os.close(pidfd)
  finally:
    for pid in grandchild:  # Never left behind, whatever failed above.
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


def test_a_failed_command_is_reported_with_its_last_words():
  finished = gpu_check_processes.run(
      [sys.executable, "-c", "import sys; print('working'); sys.exit('no device found')"], 60)
  assert finished.returncode == 1 and not finished.timed_out
  with pytest.raises(RuntimeError, match="the probe exited with status 1: no device found"):
    finished.check("the probe")
