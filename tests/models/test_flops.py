"""The FLOP formula against published and hand-counted figures."""

import pytest

from resnet_jax.models import flops, resnet


def test_resnet18_imagenet_matches_torchvision_published():
  # torchvision lists resnet18 at 1.81 GFLOPS counted as multiply-adds at 224x224.
  macs = flops.forward_flops_per_image(resnet.create_model("resnet18", 1000, "imagenet"),
                                       (224, 224, 3)) / 2
  assert macs / 1e9 == pytest.approx(1.814, rel=0.01)


def test_resnet50_imagenet_matches_torchvision_published():
  macs = flops.forward_flops_per_image(resnet.create_model("resnet50", 1000, "imagenet"),
                                       (224, 224, 3)) / 2
  assert macs / 1e9 == pytest.approx(4.09, rel=0.01)


def test_resnet18_cifar_hand_count():
  # stem 3->64 at 32x32; layer1 4 convs 64->64 at 32x32; layers 2-4: a strided conv, three
  # convs and a 1x1 shortcut each, every stage the same cost; fc 512->10.
  stem = 32 * 32 * 9 * 3 * 64
  layer1 = 4 * 32 * 32 * 9 * 64 * 64
  stage = 16 * 16 * 9 * 64 * 128 + 3 * 16 * 16 * 9 * 128 * 128 + 16 * 16 * 64 * 128
  expected = 2 * (stem + layer1 + 3 * stage + 512 * 10)
  model = resnet.create_model("resnet18", 10, "cifar")
  assert flops.forward_flops_per_image(model, (32, 32, 3)) == expected
  assert flops.train_flops_per_image(model, (32, 32, 3)) == 3 * expected
