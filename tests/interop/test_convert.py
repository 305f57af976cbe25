"""Tests for resnet_jax.convert: logits parity with PyTorch, key checks, the .pth CLI."""

import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from resnet_jax.interop import convert
from resnet_jax.models import resnet
from resnet_jax.checkpoints.restore import load_variables
from resnet_jax.errors import UserError
from tests.conftest import REPO, assert_same_logits, randomize_torch_model

# A torchvision-layout ResNet, written out so that parity needs no torchvision.


def _torch_resnet(block: str, stage_sizes: tuple[int, ...], stem: str, width: int,
                  num_classes: int):
  """torchvision's ResNet v1.5 (stride on the bottleneck's 3x3) with our stem options."""
  from torch import nn

  def downsample(inplanes: int, planes: int, stride: int):
    if stride == 1 and inplanes == planes:
      return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                         nn.BatchNorm2d(planes))

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU()
      self.downsample = downsample(inplanes, planes, stride)

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      identity = x if self.downsample is None else self.downsample(x)
      return self.relu(out + identity)

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU()
      self.downsample = downsample(inplanes, planes * 4, stride)

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      identity = x if self.downsample is None else self.downsample(x)
      return self.relu(out + identity)

  block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      if stem == "imagenet":
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
      else:
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU()
      inplanes = width
      for stage, num_blocks in enumerate(stage_sizes):
        blocks = []
        for i in range(num_blocks):
          stride = 2 if stage > 0 and i == 0 else 1
          blocks.append(block_cls(inplanes, width * 2**stage, stride))
          inplanes = width * 2**stage * block_cls.expansion
        setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
      self.num_stages = len(stage_sizes)
      self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      for stage in range(self.num_stages):
        x = getattr(self, f"layer{stage + 1}")(x)
      return self.fc(x.mean(dim=(2, 3)))

  return ResNet()


@pytest.mark.parametrize("model_name, stem, image_size", [
    ("resnet18", "cifar", 32),
    ("resnet18", "imagenet", 64),
    ("resnet50", "cifar", 32),
    ("resnet50", "imagenet", 64),
])
def test_logits_match_pytorch(model_name, stem, image_size):
  torch = pytest.importorskip("torch", reason="parity needs PyTorch (the 'torch' extra)")
  block, stage_sizes = {"resnet18": ("basic", (2, 2, 2, 2)),
                        "resnet50": ("bottleneck", (3, 4, 6, 3))}[model_name]
  width, num_classes = 16, 7
  net = _torch_resnet(block, stage_sizes, stem, width, num_classes)
  randomize_torch_model(net, seed=0)
  images_BHWC = np.random.default_rng(0).normal(size=(3, image_size, image_size, 3))
  images_BHWC = images_BHWC.astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(images_BHWC.transpose(0, 3, 1, 2))).numpy()

  state_dict = net.state_dict()
  arch = convert.resolve_architecture(state_dict)
  assert (arch.model, arch.stem, arch.width, arch.num_classes) == (
      model_name, stem, width, num_classes)
  variables = convert.from_torch_state_dict(state_dict)
  assert_same_logits(expected, variables, model_name, num_classes, stem, width, images_BHWC)


# Key and shape checks, on numpy state_dicts (no PyTorch needed).


def _tiny_variables(num_classes: int = 5) -> dict:
  model = resnet.create_model("resnet_tiny", num_classes, "cifar", width=8)
  # Shapes only: compiling the real initialisers takes XLA on CPU half a minute.
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  rng = np.random.default_rng(1)
  # Distinct random values everywhere, so a swapped or mistransposed array shows.
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), shapes)


def _as_torch_layout(variables: dict) -> dict[str, np.ndarray]:
  """Flax variables under torchvision names and layouts, spelled out independently."""
  module_names = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var"}
  state_dict = {}
  for (_, *modules, leaf), value in traverse_util.flatten_dict(variables).items():
    value = np.asarray(value)
    if leaf == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    names = [module_names.get(m, m.replace("_", ".")) for m in modules]
    state_dict[".".join([*names, leaf_names[leaf]])] = value
    if leaf == "var":
      state_dict[".".join([*names, "num_batches_tracked"])] = np.array(7)
  return state_dict


def _assert_trees_equal(a: dict, b: dict) -> None:
  """Same structure, same values: chex names the first path that differs."""
  chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))


def test_numpy_state_dict_round_trips_and_wrappers_are_unwrapped():
  variables = _tiny_variables()
  state_dict = _as_torch_layout(variables)
  assert "layer2.0.downsample.0.weight" in state_dict
  _assert_trees_equal(convert.from_torch_state_dict(state_dict), variables)
  data_parallel = {f"module.{k}": v for k, v in state_dict.items()}
  _assert_trees_equal(convert.from_torch_state_dict({"state_dict": data_parallel}), variables)
  _assert_trees_equal(convert.from_torch_state_dict(
      {"model": state_dict, "epoch": 3}, model="resnet_tiny", stem="cifar", width=8,
      num_classes=5), variables)


def _conversion_error(state_dict: dict, **kwargs) -> str:
  with pytest.raises(UserError) as info:
    convert.from_torch_state_dict(state_dict, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_unknown_keys_are_named():
  state_dict = _as_torch_layout(_tiny_variables())
  state_dict["layer1.0.se.fc.weight"] = np.zeros((2, 8), np.float32)
  message = _conversion_error(state_dict)
  assert "unknown keys: layer1.0.se.fc.weight" in message
  state_dict = _as_torch_layout(_tiny_variables())
  state_dict["layer5.0.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  assert "layer5.0.conv1.weight" in _conversion_error(state_dict, model="resnet_tiny")


def test_missing_keys_are_named():
  state_dict = _as_torch_layout(_tiny_variables())
  del state_dict["layer1.0.bn1.running_var"]
  del state_dict["layer3.0.downsample.1.weight"]
  message = _conversion_error(state_dict)
  assert "missing keys: layer1.0.bn1.running_var, layer3.0.downsample.1.weight" in message
  assert "unknown" not in message


def test_wrong_shapes_are_named_in_pytorch_layout():
  state_dict = _as_torch_layout(_tiny_variables())
  state_dict["layer1.0.conv2.weight"] = np.zeros((8, 8, 1, 1), np.float32)
  message = _conversion_error(state_dict)
  assert "layer1.0.conv2.weight is (8, 8, 1, 1), expected (8, 8, 3, 3)" in message


def test_given_architecture_is_checked_against_the_weights():
  state_dict = _as_torch_layout(_tiny_variables(num_classes=5))
  assert "resnet_tiny" in _conversion_error(state_dict, model="resnet18")
  assert "imagenet" in _conversion_error(state_dict, stem="imagenet")
  assert "num_classes=5" in _conversion_error(state_dict, num_classes=10)
  assert "width=8" in _conversion_error(state_dict, width=64)


def _save_safetensors(state_dict: dict, path) -> str:
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path))
  return str(path)


def test_safetensors_are_read_without_pytorch(tmp_path, monkeypatch):
  variables = _tiny_variables()
  state_dict = _as_torch_layout(variables)
  path = _save_safetensors(state_dict, tmp_path / "resnet_tiny.safetensors")
  monkeypatch.setitem(sys.modules, "torch", None)  # Makes `import torch` fail.
  loaded = convert.load_torch_file(path)
  assert loaded.keys() == state_dict.keys()
  _assert_trees_equal(convert.from_torch_state_dict(loaded), variables)


def test_bfloat16_safetensors_are_read(tmp_path):
  import ml_dtypes
  variables = _tiny_variables()
  state_dict = {k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v
                for k, v in _as_torch_layout(variables).items()}
  converted = convert.from_torch_state_dict(
      convert.load_torch_file(_save_safetensors(state_dict, tmp_path / "bf16.safetensors")))
  expected = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), variables)
  _assert_trees_equal(converted, expected)


def test_convert_file_writes_a_checkpoint_from_safetensors(tmp_path):
  variables = _tiny_variables()
  path = _save_safetensors(_as_torch_layout(variables), tmp_path / "w.safetensors")
  arch = convert.convert_file(path, str(tmp_path / "out"))
  assert (arch.model, arch.stem, arch.width, arch.num_classes) == ("resnet_tiny", "cifar", 8, 5)
  restored, config, _ = load_variables(str(tmp_path / "out"))
  _assert_trees_equal(jax.device_get(restored), variables)
  assert config["input_shape"] == [32, 32, 3]


def _file_error(path: str) -> str:
  with pytest.raises(UserError) as info:
    convert.normalize_state_dict(convert.load_torch_file(path))
  message = str(info.value)
  assert "\n" not in message
  return message


def test_unknown_extension_and_foreign_files_are_one_line_errors(tmp_path):
  path = tmp_path / "weights.ckpt"
  path.write_bytes(b"whatever")
  assert _file_error(str(path)) == (
      f"{path} has the unknown extension '.ckpt': pass a .pth, .pt, .bin or .safetensors file")
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
  assert _file_error(str(garbage)).startswith(f"could not read {garbage} as a safetensors file")


def test_a_state_dict_of_another_architecture_is_a_one_line_error(tmp_path):
  vgg = {"features.0.weight": np.zeros((8, 3, 3, 3), np.float32),
         "features.0.bias": np.zeros(8, np.float32),
         "classifier.0.weight": np.zeros((10, 8), np.float32)}
  path = _save_safetensors(vgg, tmp_path / "vgg.safetensors")
  with pytest.raises(UserError) as info:
    convert.convert_file(path, str(tmp_path / "out"))
  assert "\n" not in str(info.value)
  assert "cannot tell the model from the weights" in str(info.value)
  assert "check that this is a torchvision ResNet" in str(info.value)
  # A ResNet with a deep stem (timm's resnet50d) names the keys that do not fit.
  deep_stem = _as_torch_layout(_tiny_variables())
  deep_stem["conv1.0.weight"] = deep_stem.pop("conv1.weight")
  message = _conversion_error(deep_stem, stem="cifar", width=8)
  assert "missing keys: conv1.weight" in message and "unknown keys: conv1.0.weight" in message
  assert not (tmp_path / "out").exists()


def test_pth_without_pytorch_says_how_to_install(tmp_path, monkeypatch):
  path = tmp_path / "weights.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # Makes `import torch` fail.
  with pytest.raises(UserError, match=r"needs PyTorch: pip install -e '\.\[torch\]'"):
    convert.load_torch_file(str(path))


# The command line.


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "resnet_jax.convert", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_converts_pth_to_a_checkpoint_and_never_overwrites(tmp_path):
  torch = pytest.importorskip("torch", reason="writing .pth files needs PyTorch")
  net = _torch_resnet("basic", (2, 2, 2, 2), "cifar", 8, 10)
  randomize_torch_model(net, seed=1)
  state_dict = net.state_dict()
  pth = tmp_path / "resnet18.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, pth)
  output = tmp_path / "converted"

  result = _run_cli(f"--torch_checkpoint={pth}", "--model=resnet18", "--stem=cifar",
                    f"--output={output}")
  assert result.returncode == 0, result.stderr
  assert f"--config.init_checkpoint={output}" in result.stdout

  variables, config, step = load_variables(str(output))
  assert step == 0
  _assert_trees_equal(variables, convert.from_torch_state_dict(state_dict))
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                state_dict["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  assert {k: config[k] for k in ("model", "stem", "width", "num_classes", "image_size")} == {
      "model": "resnet18", "stem": "cifar", "width": 8, "num_classes": 10, "image_size": 0}
  assert config["input_shape"] == [32, 32, 3]
  assert config["mean"] == list(convert.IMAGENET_MEAN)

  again = _run_cli(f"--torch_checkpoint={pth}", f"--output={output}")
  assert again.returncode == 2
  assert "already holds checkpoints" in again.stderr
  assert "Traceback" not in again.stderr


def test_cli_errors_exit_2_without_traceback(tmp_path):
  result = _run_cli(f"--torch_checkpoint={tmp_path / 'absent.pth'}",
                    f"--output={tmp_path / 'out'}")
  assert result.returncode == 2
  absent = tmp_path / "absent.pth"
  assert f"error: PyTorch checkpoint {absent} does not exist or is not a file" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_eval_of_converted_weights_normalises_with_the_weights_statistics(tmp_path):
  """--mode=eval on convert's output (no config.json) uses the mean and std saved with the
  weights (torchvision's), not the eval split's own statistics."""
  import tensorflow_datasets as tfds
  from resnet_jax.data import augment, memory
  from resnet_jax.evaluation import evaluator
  from tests.conftest import tiny_config
  variables = _tiny_variables(num_classes=10)
  variables["batch_stats"] = jax.tree.map(lambda x: np.abs(x) + 0.5, variables["batch_stats"])
  convert.save_converted(variables, str(tmp_path / "weights"), "resnet_tiny", "cifar", 8, 10)
  requested = tiny_config(width=8, data_dir=str(tmp_path / "data"))
  with tfds.testing.mock_data(num_examples=24):
    result = evaluator.evaluate_workdir(str(tmp_path / "weights"), requested)
    split, _ = memory.load_split("cifar10", "test", str(tmp_path / "data"))
  model = resnet.create_model("resnet_tiny", 10, "cifar", 8)

  def loss_with(mean, std):
    logits = model.apply(variables, augment.preprocess(split.images, mean, std), train=False)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, split.labels).mean())

  saved = loss_with(convert.IMAGENET_MEAN, convert.IMAGENET_STD)
  own = loss_with(*memory.channel_stats(split.images))
  assert abs(saved - own) > 1e-3 * abs(saved)  # The two normalisations tell apart.
  assert result["eval_loss"] == pytest.approx(saved, rel=1e-5)
