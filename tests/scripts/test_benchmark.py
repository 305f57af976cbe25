"""Tests for scripts/benchmark.py and scripts/torch_baselines.py: JSON, PyTorch twin, peaks."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "benchmark.py")
TORCH_BASELINES = os.path.join(REPO, "scripts", "torch_baselines.py")
# Width 8, not 4: see the channels_last guard in torch_baselines.run_torch_worker.
TINY = ["--model=resnet_tiny", "--width=8", "--batch_size=8", "--image_size=16", "--steps=2",
        "--warmup=1", "--repeats=1", "--num_examples=64"]
KEYS = {"jax_images_per_second", "torch_images_per_second", "ratio", "device", "model", "width",
        "batch_size", "precision", "flops_per_image", "mfu", "bare_step_images_per_second",
        "loop_images_per_second", "loop_to_bare_ratio", "compile_seconds", "torch_variants",
        "imported_tensorflow"}


def load_script(path: str = SCRIPT):
  """The script at `path` as a module (scripts/ is not a package)."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def benchmark_run() -> tuple[dict, str]:
  """One CPU run of the script, PyTorch included; returns its last line, parsed, and stdout."""
  # Unoptimised XLA code compiles several times faster, and one OpenMP thread keeps torch
  # from spinning on a busy machine: this run checks the output, not the speed.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  result = subprocess.run([sys.executable, SCRIPT, *TINY, "--peak_flops=1e12"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


def test_run_ends_with_the_json_result(benchmark_run):
  out, stdout = benchmark_run
  assert KEYS <= out.keys()
  assert out["imported_tensorflow"] is False
  assert (out["model"], out["width"], out["batch_size"], out["precision"]) == (
      "resnet_tiny", 8, 8, "fp32")
  for key in ("jax_images_per_second", "bare_step_images_per_second", "loop_images_per_second",
              "loop_to_bare_ratio", "compile_seconds", "flops_per_image"):
    assert out[key] > 0, key
  assert out["mfu"] == pytest.approx(out["jax_images_per_second"]
                                     * out["flops_per_image"] / 1e12)
  assert "jax bare train_step" in stdout and "GFLOP/img" in stdout


def test_run_compares_with_pytorch(benchmark_run):
  pytest.importorskip("torch")
  out, stdout = benchmark_run
  assert set(out["torch_variants"]) == {"eager", "channels_last"}  # No torch.compile on CPU.
  assert all(v["counted"] and v["images_per_second"] > 0 for v in out["torch_variants"].values())
  assert out["torch_images_per_second"] == max(v["images_per_second"]
                                               for v in out["torch_variants"].values())
  assert out["ratio"] == pytest.approx(out["jax_images_per_second"] / out["torch_images_per_second"])
  assert "torch channels_last" in stdout


def fake_jax_out(**overrides) -> dict:
  """What run_jax returns, for a 2 ms step of 8 images on a CPU."""
  out = {f"{k}_seconds_per_step": 0.002 for k in ("full", "bare", "loop")}
  out.update(full_compile_seconds=1.0, bare_compile_seconds=1.0, full_flops=8e6, bare_flops=8e6,
             formula_flops_per_image=1e6,
             init_seconds=0.1, log_every=50, peak_memory_bytes=None, device="cpu: cpu x1",
             device_kind="cpu", platform="cpu", matmul_precision=None, jax_version="0")
  out.update(overrides)
  return out


def test_no_torch_gives_null_comparison():
  benchmark = load_script()
  args = benchmark.parse_args(["--batch_size=8", "--no_torch"])
  assert load_script(TORCH_BASELINES).run_torch(args) == ({}, {}, "--no_torch")
  rows, notes, out = benchmark.summarize(args, fake_jax_out(), {}, {}, "--no_torch")
  assert out["torch_images_per_second"] is None and out["ratio"] is None
  assert out["torch_variants"] == {} and "PyTorch: --no_torch" in notes
  assert out["jax_images_per_second"] == pytest.approx(4000) and out["flops_per_image"] == 1e6
  assert out["mfu"] is None and "n/a" in benchmark.format_table(rows)
  json.dumps(out)


def test_only_variants_at_the_run_precision_are_counted():
  benchmark = load_script()
  args = benchmark.parse_args(["--batch_size=8"])
  variants = {"eager": {"precision": "fp32", "images_per_second": 1000.0},
              "channels_last_amp_bf16": {"precision": "bf16", "images_per_second": 9000.0},
              "compile_channels_last": {"precision": "fp32", "error": "TimeoutError: "}}
  rows, _, out = benchmark.summarize(args, fake_jax_out(), variants, {}, None)
  assert out["torch_best_variant"] == "eager" and out["ratio"] == pytest.approx(4.0)
  assert [v["counted"] for v in out["torch_variants"].values()] == [True, False, False]
  assert "(not counted)" in benchmark.format_table(rows)


@pytest.mark.parametrize("model,stem", [("resnet18", "cifar"), ("resnet50", "imagenet")])
def test_torch_twin_has_the_flax_parameter_count(model, stem):
  """The PyTorch ResNet is the same network: same parameter count as resnet_jax's."""
  pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp
  from resnet_jax.models import resnet
  baselines = load_script(TORCH_BASELINES)
  flax_model = resnet.create_model(model, 10, stem=stem, width=8)
  shapes = jax.eval_shape(lambda: flax_model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                  train=False))
  flax_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  torch_count = sum(p.numel() for p in baselines.torch_resnet(model, stem, 8, 10).parameters())
  assert torch_count == flax_count


def test_peak_flops_by_device_and_precision():
  benchmark = load_script()
  args = lambda **kw: benchmark.parse_args([f"--{k}={v}" for k, v in kw.items()])
  gpu = lambda kind, precision=None: {"platform": "gpu", "device_kind": kind,
                                      "matmul_precision": precision}
  assert benchmark.peak_flops(args(), gpu("NVIDIA H100 80GB HBM3"))[0] == 495e12
  assert benchmark.peak_flops(args(precision="bf16"), gpu("NVIDIA H200"))[0] == 989e12
  assert benchmark.peak_flops(args(), gpu("NVIDIA H100 80GB HBM3", "highest"))[0] == 67e12
  assert benchmark.peak_flops(args(), gpu("NVIDIA H100 PCIe"))[0] == 378e12
  assert benchmark.peak_flops(args(), {"platform": "cpu", "device_kind": "cpu",
                                       "matmul_precision": None})[0] is None
  assert benchmark.peak_flops(args(peak_flops=2e12), gpu("unknown"))[0] == 2e12
