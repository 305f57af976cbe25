"""Backbone features against torchvision's IntermediateLayerGetter: shapes and values."""

import numpy as np

from resnet_jax.evaluation import features
from resnet_jax.interop import convert
from tests.conftest import import_torch, import_torchvision, randomize_torch_model


def test_stage_outputs_match_torchvisions_intermediate_layer_getter(tmp_path):
  torch = import_torch()
  torchvision = import_torchvision()
  from torchvision.models._utils import IntermediateLayerGetter
  net = torchvision.models.resnext50_32x4d(num_classes=10)
  randomize_torch_model(net, seed=0)
  stages = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
  getter = IntermediateLayerGetter(net, return_layers=stages).eval()
  images_BHWC = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = {k: v.numpy().transpose(0, 2, 3, 1)
                for k, v in getter(torch.from_numpy(images_BHWC.transpose(0, 3, 1, 2))).items()}

  workdir = str(tmp_path / "resnext50")
  convert.save_converted(convert.from_torch_state_dict(net.state_dict()), workdir,
                         "resnext50_32x4d", "imagenet", 64, 10)
  backbone = features.load_backbone(workdir)
  found = {k: np.asarray(v) for k, v in backbone(images_BHWC).items()}
  assert sorted(found) == sorted(expected)
  for stage, stride, channels in (("layer1", 4, 256), ("layer2", 8, 512), ("layer3", 16, 1024),
                                  ("layer4", 32, 2048)):
    assert found[stage].shape == expected[stage].shape == (2, 64 // stride, 64 // stride,
                                                           channels)
    scale = np.abs(expected[stage]).max()
    assert np.abs(found[stage] - expected[stage]).max() < 1e-4 * scale, stage
  # preprocess applies the saved normalisation (torchvision's ImageNet mean and std).
  pixels = np.full((1, 8, 8, 3), 255, np.uint8)
  np.testing.assert_allclose(np.asarray(backbone.preprocess(pixels))[0, 0, 0],
                             (1 - np.array(convert.IMAGENET_MEAN)) / convert.IMAGENET_STD,
                             rtol=1e-6)
