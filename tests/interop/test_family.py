"""The ResNet family against torchvision's and timm's own model code: convert, export, parity."""

import numpy as np
import pytest

from resnet_jax.errors import UserError
from resnet_jax.interop import convert, export
from tests.conftest import (import_timm, import_torch, import_torchvision, randomize_torch_model,
                            relative_logit_difference)

NUM_CLASSES = 7
# (our name, where the reference comes from, image side): 72 px gives ResNet-D's pooled
# shortcut an odd input (9 -> 5), where ceil_mode and count_include_pad=False matter.
FAMILY = [
    ("resnext50_32x4d", "torchvision", 64),
    ("wide_resnet50_2", "torchvision", 64),
    ("resnext101_64x4d", "torchvision", 64),
    ("resnet50d", "timm", 72),
    ("seresnet50", "timm", 64),
]


def reference_model(name: str, source: str, seed: int = 0):
  """The reference implementation's model, with random weights and non-trivial BN statistics."""
  if source == "torchvision":
    net = getattr(import_torchvision().models, name)(num_classes=NUM_CLASSES)
  else:
    net = import_timm().create_model(name, pretrained=False, num_classes=NUM_CLASSES)
  randomize_torch_model(net, seed)
  return net


def reference_logits(net, images_BHWC: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return net(torch.from_numpy(images_BHWC.transpose(0, 3, 1, 2))).numpy()


def images(size: int, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("name, source, size", FAMILY)
def test_convert_and_export_match_the_reference_model(name, source, size):
  torch = import_torch()
  net = reference_model(name, source)
  x = images(size)
  expected = reference_logits(net, x)
  state_dict = net.state_dict()

  arch = convert.resolve_architecture(state_dict)
  assert (arch.model, arch.stem, arch.width, arch.num_classes) == (
      name, "imagenet", 64, NUM_CLASSES)
  variables = convert.from_torch_state_dict(state_dict)
  # The images must matter, or a wrong mapping could hide behind the fc bias.
  assert np.abs(expected - expected.mean(axis=0)).max() > 1e-2 * np.abs(expected).max()
  assert relative_logit_difference(expected, variables, name, NUM_CLASSES, "imagenet", 64,
                                   x) < 1e-4

  exported, exported_arch = export.to_torch_state_dict(variables, {"model": name,
                                                                   "stem": "imagenet"})
  assert exported_arch == arch
  fresh = reference_model(name, source, seed=1)
  fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()},
                        strict=True)
  for key, value in state_dict.items():
    if not key.endswith("num_batches_tracked"):
      assert np.asarray(exported[key]).tobytes() == value.numpy().tobytes(), key
  np.testing.assert_array_equal(reference_logits(fresh, x), expected)


@pytest.mark.parametrize("name, expected", [
    # torchvision's published figures (torchvision.models docs, ImageNet-1K weights).
    ("resnext50_32x4d", 25_028_904), ("resnext101_32x8d", 88_791_336),
    ("resnext101_64x4d", 83_455_272), ("wide_resnet50_2", 68_883_240),
    ("wide_resnet101_2", 126_886_696)])
def test_parameter_counts_match_torchvision(name, expected):
  from tests.models.test_models import param_count
  from resnet_jax.models import resnet
  assert param_count(resnet.create_model(name, 1000, stem="imagenet")) == expected
  torchvision = import_torchvision()
  net = getattr(torchvision.models, name)()
  assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("name", ["resnet50d", "seresnet50"])
def test_parameter_counts_match_timm(name):
  from tests.models.test_models import param_count
  from resnet_jax.models import resnet
  timm = import_timm()
  expected = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
  assert param_count(resnet.create_model(name, 1000, stem="imagenet")) == expected


def test_a_block_type_the_family_lacks_is_named():
  timm = import_timm()
  state_dict = timm.create_model("ecaresnet50d", pretrained=False, num_classes=3).state_dict()
  with pytest.raises(UserError) as info:
    convert.from_torch_state_dict(state_dict)
  message = str(info.value)
  assert "\n" not in message
  assert "ECA attention" in message and "layer1.0.se.conv.weight" in message


def test_an_unknown_model_name_lists_the_known_ones():
  net = reference_model("resnext50_32x4d", "torchvision")
  with pytest.raises(UserError, match="unknown model 'resnext50'.*resnext50_32x4d.*seresnet50"):
    convert.from_torch_state_dict(net.state_dict(), model="resnext50")
  with pytest.raises(UserError, match="model='resnet50' was asked for but the weights hold "
                                      "model='resnext50_32x4d'"):
    convert.from_torch_state_dict(net.state_dict(), model="resnet50")


def test_a_structure_no_model_has_is_described(tmp_path):
  net = reference_model("resnext50_32x4d", "torchvision")
  state_dict = {k: v for k, v in net.state_dict().items() if not k.startswith("layer4.2.")}
  with pytest.raises(UserError) as info:
    convert.from_torch_state_dict(state_dict)
  assert "blocks per stage (3, 4, 6, 2), bottleneck blocks, 32 groups of 4 channels" in str(
      info.value)
  assert "resnet_jax has resnet18" in str(info.value)


def test_the_resnext_finetune_config_names_a_family_member_and_its_weights():
  import importlib.util
  import os
  from resnet_jax.config import configuration
  from resnet_jax.models import resnet, zoo
  from tests.conftest import REPO
  spec = importlib.util.spec_from_file_location(
      "finetune_resnext50", os.path.join(REPO, "configs", "finetune_resnext50.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  configuration.validate(config)  # A published name needs no path on disk.
  assert config.model in resnet.MODELS and config.stem == "imagenet"
  model, _, file_name = zoo.torchvision_weights(config.init_checkpoint.split(":", 1)[1])
  assert model == config.model and file_name == "resnext50_32x4d-1a0047aa.pth"


@pytest.mark.parametrize("name, source", [("resnet50d", "timm"),
                                          ("wide_resnet50_2", "torchvision")])
def test_the_printed_snippet_loads_the_export_strictly(tmp_path, name, source):
  net = reference_model(name, source)
  variables = convert.from_torch_state_dict(net.state_dict())
  state_dict, arch = export.to_torch_state_dict(variables, {"model": name, "stem": "imagenet"})
  output = str(tmp_path / "w.safetensors")
  export.write_state_dict(state_dict, output)
  namespace = {}
  exec("\n".join(export.loading_snippet(arch, output)), namespace)  # Raises if not strict.
  loaded = namespace["model"]
  assert type(loaded).__module__.split(".")[0] == source
  for key, value in net.state_dict().items():
    assert loaded.state_dict()[key].equal(value) or key.endswith("num_batches_tracked"), key
