"""Tests for resnet_jax.export: PyTorch parity, bit-exact round trips, EMA, errors, the CLI."""

import functools
import os
import stat
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.interop import convert, export
from resnet_jax.models import ema as ema_lib, resnet
from resnet_jax.evaluation import prediction
from resnet_jax.checkpoints.checkpointing import Checkpointer
from resnet_jax.errors import UserError
from tests.conftest import assert_same_logits
from tests.conftest import randomize_torch_model
from tests.interop.test_convert import _as_torch_layout, _tiny_variables, _torch_resnet
from tests.evaluation.test_predict import _random_leaf

from tests.conftest import REPO
BLOCKS = {"resnet_tiny": ("basic", (1, 1, 1, 1)), "resnet18": ("basic", (2, 2, 2, 2)),
          "resnet50": ("bottleneck", (3, 4, 6, 3))}


def _random_variables(model_name: str, stem: str, width: int, num_classes: int,
                      seed: int = 0) -> dict:
  """He-normal kernels and BN statistics far from 0 and 1, as numpy arrays."""
  model = resnet.create_model(model_name, num_classes, stem, width)
  # Shapes only: compiling the real initialisers takes XLA on CPU half a minute.
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return jax.tree_util.tree_map_with_path(
      functools.partial(_random_leaf, np.random.default_rng(seed)), shapes)


def _workdir(tmp_path, variables: dict, model_name: str, stem: str, width: int,
             num_classes: int) -> str:
  workdir = str(tmp_path / f"{model_name}_{stem}")
  convert.save_converted(variables, workdir, model_name, stem, width, num_classes)
  return workdir


def _assert_bit_exact(actual: dict, expected: dict) -> None:
  assert sorted(actual) == sorted(expected)
  for key, value in expected.items():
    got = np.asarray(actual[key])
    value = np.asarray(value)
    assert got.dtype == value.dtype and got.shape == value.shape, key
    assert got.tobytes() == value.tobytes(), key


# Parity with PyTorch: resnet_jax's logits from a PyTorch module loaded strictly.


@pytest.mark.parametrize("model_name, stem, output", [
    ("resnet_tiny", "cifar", "w.safetensors"),
    ("resnet50", "imagenet", "w.pth"),
])
def test_exported_weights_give_pytorch_the_same_logits(tmp_path, model_name, stem, output):
  torch = pytest.importorskip("torch", reason="parity needs PyTorch (the 'torch' extra)")
  width, num_classes, size = 8, 6, 32
  variables = _random_variables(model_name, stem, width, num_classes)
  workdir = _workdir(tmp_path, variables, model_name, stem, width, num_classes)
  arch, _, from_ema = export.export_checkpoint(workdir, str(tmp_path / output))
  assert (arch.model, arch.stem, arch.width, arch.num_classes, from_ema) == (
      model_name, stem, width, num_classes, False)

  if output.endswith(".pth"):
    state_dict = torch.load(tmp_path / output, weights_only=True)
  else:
    from safetensors.torch import load_file
    state_dict = load_file(tmp_path / output)
  net = _torch_resnet(*BLOCKS[model_name], stem, width, num_classes)
  net.load_state_dict(state_dict, strict=True)
  if output.endswith(".pth"):  # safetensors sorts its keys; torch.save keeps torchvision's order.
    assert list(state_dict) == list(net.state_dict())
  assert state_dict["bn1.num_batches_tracked"].dtype == torch.int64
  assert state_dict["bn1.num_batches_tracked"].shape == ()
  net.eval()

  images_BHWC = np.random.default_rng(1).normal(size=(3, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images_BHWC.transpose(0, 3, 1, 2))).numpy()
  assert_same_logits(expected, variables, model_name, num_classes, stem, width, images_BHWC)


# Round trips: torchvision-layout state_dict -> convert -> export, bit for bit.


def test_pth_round_trip_is_bit_exact(tmp_path):
  torch = pytest.importorskip("torch", reason="writing .pth files needs PyTorch")
  net = _torch_resnet("basic", (2, 2, 2, 2), "imagenet", 8, 10)
  randomize_torch_model(net, seed=2)
  original = net.state_dict()  # num_batches_tracked 0, as in a fresh torchvision model.
  torch.save(original, tmp_path / "in.pth")
  convert.convert_file(str(tmp_path / "in.pth"), str(tmp_path / "converted"))
  export.export_checkpoint(str(tmp_path / "converted"), str(tmp_path / "out.pth"))
  exported = torch.load(tmp_path / "out.pth", weights_only=True)
  assert list(exported) == list(original)
  _assert_bit_exact({k: v.numpy() for k, v in exported.items()},
                    {k: v.numpy() for k, v in original.items()})


def test_safetensors_round_trip_is_bit_exact_without_pytorch(tmp_path, monkeypatch):
  from safetensors.numpy import load_file, save_file
  original = {k: np.ascontiguousarray(v) for k, v in _as_torch_layout(_tiny_variables()).items()}
  for key in original:
    if key.endswith("num_batches_tracked"):
      original[key] = np.zeros((), np.int64)  # As in a fresh torchvision model.
  monkeypatch.setitem(sys.modules, "torch", None)  # Makes `import torch` fail.
  save_file(original, str(tmp_path / "in.safetensors"))
  convert.convert_file(str(tmp_path / "in.safetensors"), str(tmp_path / "converted"))
  export.export_checkpoint(str(tmp_path / "converted"), str(tmp_path / "out.safetensors"))
  exported = load_file(str(tmp_path / "out.safetensors"))
  _assert_bit_exact(exported, original)


# EMA weights.


def test_ema_weights_are_preferred():
  variables = {"params": {"a": np.zeros(2)}, "batch_stats": {"b": np.zeros(2)}}
  assert ema_lib.preferred(variables) == (variables, "raw")
  ema = {"params": {"a": np.ones(2)}, "batch_stats": {"b": np.ones(2)}}
  assert ema_lib.preferred({**variables, "ema": ema}) == (ema, "ema")


def test_ema_weights_of_a_checkpoint_are_exported(tmp_path):
  from safetensors.numpy import load_file
  variables = _random_variables("resnet_tiny", "cifar", 8, 5)
  ema = _random_variables("resnet_tiny", "cifar", 8, 5, seed=7)
  checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints"))
  checkpointer.save(0, {**variables, "ema": ema}, {"model": "resnet_tiny", "stem": "cifar"},
                    force=True)
  checkpointer.close()
  _, _, from_ema = export.export_checkpoint(str(tmp_path / "run"), str(tmp_path / "w.safetensors"))
  assert from_ema
  exported = load_file(str(tmp_path / "w.safetensors"))
  np.testing.assert_array_equal(exported["fc.bias"], ema["params"]["fc"]["bias"])


# Errors, each one line.


def _error(function, *args) -> str:
  with pytest.raises(UserError) as info:
    function(*args)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_output_paths_that_cannot_be_written_are_refused(tmp_path):
  assert "unknown extension '.npz'" in _error(export.check_output, str(tmp_path / "w.npz"))
  assert "unknown extension '(none)'" in _error(export.check_output, str(tmp_path / "w"))
  missing = tmp_path / "absent" / "w.safetensors"
  assert f"{tmp_path / 'absent'} does not exist" in _error(export.check_output, str(missing))
  (tmp_path / "file").write_text("")
  under_a_file = tmp_path / "file" / "w.pth"
  assert "is not a directory" in _error(export.check_output, str(under_a_file))
  (tmp_path / "dir.pth").mkdir()
  assert "is a directory" in _error(export.check_output, str(tmp_path / "dir.pth"))


def test_read_only_directory_is_refused(tmp_path, monkeypatch):
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
  if os.geteuid() == 0:  # Root may write anywhere: make os.access say what it says to others.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
  try:
    assert "is read-only" in _error(export.check_output, str(read_only / "w.safetensors"))
  finally:
    read_only.chmod(stat.S_IRWXU)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
  import errno
  import safetensors.numpy

  def full_disk(tensors, path, metadata=None):
    open(path, "wb").write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)
  output = str(tmp_path / "w.safetensors")
  message = _error(export.write_state_dict, {"a": np.zeros(2, np.float32)}, output)
  assert message.startswith(f"cannot write {output} (No space left on device)")
  assert os.listdir(tmp_path) == []


def test_pth_without_pytorch_suggests_safetensors(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  message = _error(export.check_output, str(tmp_path / "w.pth"))
  assert "needs PyTorch" in message and ".safetensors, which does not" in message


def test_checkpoint_paths_that_are_missing_or_files_are_refused(tmp_path):
  assert "does not exist" in _error(export.export_checkpoint, str(tmp_path / "absent"),
                                    str(tmp_path / "w.safetensors"))
  (tmp_path / "weights.pth").write_bytes(b"")
  assert "is a file, not a folder" in _error(prediction.checkpoint_path,
                                             str(tmp_path / "weights.pth"), None)
  assert not (tmp_path / "w.safetensors").exists()


def test_a_config_that_contradicts_the_weights_is_refused():
  variables = _random_variables("resnet_tiny", "cifar", 8, 5)
  message = _error(export.to_torch_state_dict, variables, {"model": "resnet18"}, "ckpt")
  assert message.startswith("ckpt: its config says model='resnet18'")


# The snippet printed for the CIFAR stem, run against a stand-in for torchvision.


def test_cifar_stem_snippet_loads_strictly_into_torchvision_resnet18(tmp_path, monkeypatch):
  pytest.importorskip("torch", reason="the snippet runs PyTorch")
  variables = _random_variables("resnet18", "cifar", 64, 10)
  state_dict, arch = export.to_torch_state_dict(variables, {})
  output = str(tmp_path / "resnet18.safetensors")
  export.write_state_dict(state_dict, output)
  # torchvision's resnet18 is our test module with the ImageNet stem: the snippet must adapt it.
  torchvision = types.ModuleType("torchvision")
  torchvision.models = types.SimpleNamespace(resnet18=lambda num_classes: _torch_resnet(
      "basic", (2, 2, 2, 2), "imagenet", 64, num_classes))
  monkeypatch.setitem(sys.modules, "torchvision", torchvision)
  lines = export.loading_snippet(arch, output)
  assert "model.maxpool = nn.Identity()" in lines
  namespace = {}
  exec("\n".join(lines), namespace)  # pylint: disable=exec-used
  net = namespace["model"]
  assert tuple(net.conv1.weight.shape) == (64, 3, 3, 3) and net.conv1.stride == (1, 1)


# The command line.


def test_cli_exports_and_says_how_to_load_or_exits_2(tmp_path):
  variables = _random_variables("resnet_tiny", "cifar", 8, 5)
  workdir = _workdir(tmp_path, variables, "resnet_tiny", "cifar", 8, 5)
  output = tmp_path / "tiny.safetensors"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = functools.partial(subprocess.run, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
  result = run([sys.executable, "-m", "resnet_jax.export", f"--workdir={workdir}",
                f"--output={output}"])
  assert result.returncode == 0, result.stderr
  assert f"to {output}" in result.stdout
  assert f"state_dict = load_file({str(output)!r})" in result.stdout
  from safetensors.numpy import load_file
  assert load_file(str(output)).keys() == export.to_torch_state_dict(variables, {})[0].keys()

  result = run([sys.executable, "-m", "resnet_jax.export", f"--workdir={output}",
                f"--output={tmp_path / 'again.safetensors'}"])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --workdir={output} is a file, not a folder: pass the workdir that training or "
      "resnet_jax.convert wrote, or a checkpoint folder inside it"]
