"""int8: onnxruntime's static quantization and LiteRT's converter, calibrated on the run's
training pictures; the file's metrics by the same command."""

import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax.cli import export as cli
from resnet_jax.interop import artifacts, runtimes
from tests.conftest import REPO
from tests.evaluation.test_deployment import folder_run
from tests.interop.test_export_formats import pictures


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return folder_run(tmp_path_factory.mktemp("int8"))


def _close_to_float32(int8: np.ndarray, float32: np.ndarray) -> None:
  """int8 logits follow the float32 ones: a broken quantization (a wrong range, a lost scale)
  gives noise or a constant."""
  scale = np.abs(float32).max()
  assert np.abs(int8 - float32).max() < 0.5 * scale
  assert np.corrcoef(int8.ravel(), float32.ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_onnx_int8_is_quantized_static_and_follows_float32(run, tmp_path):
  for module, how in artifacts.TOOLCHAINS["onnx"]:
    pytest.importorskip(module, reason=f"--format=onnx needs {module} ({how})")
  import onnx
  float32, int8 = str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
  cli.export_file(run, "onnx", float32)
  contract = cli.export_file(run, "onnx", int8, "int8", calibration_images=12)
  assert contract["quantization"]["calibration_pictures"] == 12
  assert contract["quantization"]["tool"].startswith("onnxruntime.quantization.quantize_static")
  model = onnx.load(int8)
  ops = {node.op_type for node in model.graph.node}
  assert {"QuantizeLinear", "DequantizeLinear"} <= ops
  weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
  assert sum(int(np.prod(t.dims)) for t in weights) > 10_000  # The convolutions' kernels.
  assert os.path.getsize(int8) < 0.6 * os.path.getsize(float32)
  images = pictures(16, 3, batch=16)
  _close_to_float32(runtimes.load_runner(int8)(images), runtimes.load_runner(float32)(images))


@pytest.mark.slow
def test_litert_int8_is_quantized_by_the_converter_and_follows_float32(run, tmp_path):
  for module, how in artifacts.TOOLCHAINS["tflite"]:
    pytest.importorskip(module, reason=f"--format=tflite needs {module} ({how})")
  from ai_edge_litert.interpreter import Interpreter
  float32, int8 = str(tmp_path / "f.tflite"), str(tmp_path / "q.tflite")
  cli.export_file(run, "tflite", float32)
  cli.export_file(run, "tflite", int8, "int8", calibration_images=12)
  tensors = Interpreter(model_path=int8).get_tensor_details()
  assert sum(int(np.prod(t["shape"])) for t in tensors if t["dtype"] == np.int8) > 10_000
  assert os.path.getsize(int8) < 0.6 * os.path.getsize(float32)
  images = pictures(16, 3, batch=16)
  _close_to_float32(runtimes.load_runner(int8)(images), runtimes.load_runner(float32)(images))


@pytest.mark.slow
def test_the_command_exports_int8_and_prints_its_eval_metrics(run, tmp_path):
  pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install -e '.[export]')")
  for module, how in artifacts.TOOLCHAINS["onnx"]:
    pytest.importorskip(module, reason=f"--format=onnx needs {module} ({how})")
  output = tmp_path / "q.onnx"
  command = lambda *args: subprocess.run(
      [sys.executable, "-m", "resnet_jax.export", *args], cwd=REPO, capture_output=True,
      text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  result = command(f"--workdir={run}", "--format=onnx", "--quantize=int8",
                   "--calibration_images=8", f"--output={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"as onnx int8 to {output}" in result.stdout
  assert "session = ort.InferenceSession" in result.stdout
  result = command(f"--evaluate={output}", f"--workdir={run}", "--batch_size=5")
  assert result.returncode == 0, result.stderr[-3000:]
  header = result.stdout.strip().splitlines()[0]
  assert header.startswith(f"checkpoint {output} (step 7) on test: accuracy ")
  assert "over 12 examples" in header
