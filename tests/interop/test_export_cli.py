"""Bad input to `python -m resnet_jax.export --format=...`: one `error:` line naming the fix,
exit 2, nothing written."""

import os
import stat
import subprocess
import sys

import pytest

from resnet_jax.cli import export as cli
from resnet_jax.errors import UserError
from resnet_jax.interop import artifacts
from tests.cli.test_bad_input import assert_clean_error
from tests.conftest import REPO
from tests.interop.test_export_formats import write_run


def command(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "resnet_jax.export", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _error(function, *args) -> str:
  with pytest.raises(UserError) as info:
    function(*args)
  assert "\n" not in str(info.value)
  return str(info.value)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return write_run(tmp_path_factory.mktemp("cli") / "run", "resnet_tiny", "cifar", 8, 16, 3, 0)


@pytest.mark.slow  # Two processes that import JAX and TensorFlow: ~25 s on 2 busy cores.
def test_an_unknown_format_and_an_unwritable_output_exit_2_before_reading(tmp_path, workdir):
  assert_clean_error(command(f"--workdir={workdir}", "--format=coreml", f"--output={tmp_path}/m"),
                     "unknown --format=coreml", "pytorch, onnx, tflite, stablehlo")
  (tmp_path / "file").write_text("")
  assert_clean_error(command(f"--workdir={workdir}", "--format=stablehlo",
                             f"--output={tmp_path}/file/m.stablehlo"),
                     "is not a directory", "pass another --output")
  assert sorted(os.listdir(tmp_path)) == ["file"]


def test_outputs_that_cannot_be_written_are_refused(tmp_path, monkeypatch):
  check = artifacts.check_output
  assert "pass --output=FILE.onnx" in _error(check, None, "onnx")
  assert "does not end in .tflite" in _error(check, str(tmp_path / "m.onnx"), "tflite")
  assert "does not exist" in _error(check, str(tmp_path / "absent" / "m.onnx"), "onnx")
  (tmp_path / "d.onnx").mkdir()
  assert "is a directory" in _error(check, str(tmp_path / "d.onnx"), "onnx")
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
  if os.geteuid() == 0:  # Root may write anywhere: make os.access say what it says to others.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
  try:
    assert "is read-only" in _error(check, str(read_only / "m.stablehlo"), "stablehlo")
  finally:
    read_only.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("name, module, install", [
    ("onnx", "onnxscript", "pip install -e '.[export]'"),
    ("onnx", "torch", "pip install torch"),
    ("tflite", "ai_edge_litert", "pip install -e '.[export]'")])
def test_a_missing_toolchain_names_the_package_to_install(monkeypatch, name, module, install):
  for other, _ in artifacts.TOOLCHAINS[name]:  # Only `module` missing: the line must name it.
    if other != module:
      pytest.importorskip(other, reason=f"this case needs {other} installed")
  monkeypatch.setitem(sys.modules, module, None)  # Makes the module unimportable.
  message = _error(artifacts.check_format, name)
  assert message.startswith(f"--format={name} needs {module}") and install in message


def test_quantization_is_int8_for_onnx_and_tflite_only():
  assert "unknown --quantize=int4" in _error(artifacts.check_format, "onnx", "int4")
  assert "not stablehlo" in _error(artifacts.check_format, "stablehlo", "int8")
  assert "not pytorch" in _error(artifacts.check_format, "pytorch", "int8")


def test_a_failed_write_leaves_neither_file(tmp_path, monkeypatch):
  replace = os.replace
  calls = []

  def second_fails(source, destination):
    calls.append(destination)
    if len(calls) == 2:
      raise OSError(28, "No space left on device")
    replace(source, destination)

  monkeypatch.setattr(os, "replace", second_fails)
  model, contract = str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx.json")
  message = _error(artifacts.write_all_or_nothing, {model: b"model", contract: b"{}"})
  assert "No space left on device" in message
  assert os.listdir(tmp_path) == []


def test_evaluate_needs_a_run_and_an_exported_file(tmp_path, workdir):
  assert "pass --workdir=RUN too" in _error(cli.evaluate_file, str(tmp_path / "m.onnx"), None, 8)
  assert "is not a file" in _error(cli.evaluate_file, str(tmp_path / "m.onnx"), workdir, 8)
  (tmp_path / "weights.pth").write_bytes(b"")
  assert "is not an exported model" in _error(cli.evaluate_file, str(tmp_path / "weights.pth"),
                                              workdir, 8)
  (tmp_path / "m.stablehlo").write_bytes(b"not a model")
  assert "has no m.stablehlo.json beside it" in _error(cli.evaluate_file,
                                                       str(tmp_path / "m.stablehlo"), workdir, 8)
