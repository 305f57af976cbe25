"""The ResNet family as PyTorch modules in torchvision's (and timm's) state_dict layout, at any
width, stem and channel count: what the ONNX export traces.

torchvision builds only width 64 and 3-channel ImageNet stems, and timm's
resnet50d and seresnet50 need timm; these modules take `export.to_torch_state_dict`'s
output with `load_state_dict(strict=True)` for every member `resnet.MODELS` holds
(tests/interop/test_export_formats.py checks the keys against torchvision's and
timm's own modules, and the logits against resnet_jax's). Importing this module
imports PyTorch.
"""

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from resnet_jax.interop.architecture import Architecture
from resnet_jax.models import resnet

BN_EPSILON = resnet.BN_EPSILON


def _conv(inputs: int, outputs: int, kernel: int, stride: int = 1, groups: int = 1,
          bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(inputs, outputs, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


def _norm(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPSILON)


class SqueezeExcite(nn.Module):
  """timm's SEModule: global mean, 1x1 reduce, ReLU, 1x1 expand, sigmoid gate."""

  def __init__(self, channels: int):
    super().__init__()
    self.fc1 = _conv(channels, resnet.se_channels(channels), 1, bias=True)
    self.fc2 = _conv(resnet.se_channels(channels), channels, 1, bias=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    s = torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))
    return x * torch.sigmoid(self.fc2(s))


class Block(nn.Module):
  """torchvision's BasicBlock or Bottleneck, with timm's SE gate and ResNet-D shortcut."""

  def __init__(self, inputs: int, filters: int, stride: int, bottleneck: bool, groups: int,
               width_per_group: int, se: bool, avg_down: bool):
    super().__init__()
    self.bottleneck = bottleneck
    if bottleneck:
      width = int(filters * width_per_group / 64) * groups
      outputs = filters * resnet.Bottleneck.expansion
      self.conv1, self.bn1 = _conv(inputs, width, 1), _norm(width)
      self.conv2, self.bn2 = _conv(width, width, 3, stride, groups), _norm(width)
      self.conv3, self.bn3 = _conv(width, outputs, 1), _norm(outputs)
    else:
      outputs = filters
      self.conv1, self.bn1 = _conv(inputs, filters, 3, stride), _norm(filters)
      self.conv2, self.bn2 = _conv(filters, filters, 3), _norm(filters)
    self.se = SqueezeExcite(outputs) if se else None
    self.downsample = None
    if stride != 1 or inputs != outputs:
      if avg_down:  # timm's: the pool keeps index 0 (Identity at stride 1), the conv index 1.
        pool = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1
                else nn.Identity())
        self.downsample = nn.Sequential(pool, _conv(inputs, outputs, 1), _norm(outputs))
      else:
        self.downsample = nn.Sequential(_conv(inputs, outputs, 1, stride), _norm(outputs))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.bottleneck:
      y = self.bn3(self.conv3(torch.relu(y)))
    if self.se is not None:
      y = self.se(y)
    shortcut = x if self.downsample is None else self.downsample(x)
    return torch.relu(shortcut + y)


class ResNet(nn.Module):
  """`resnet.ResNet` over NCHW float images: the same stems, stages and head."""

  def __init__(self, arch: Architecture):
    super().__init__()
    v = resnet.variant(arch.model)
    width, stride = arch.width, 2 if arch.stem == "imagenet" else 1
    if v["deep_stem"]:  # timm's Sequential: conv, bn, relu, conv, bn, relu, conv.
      half = width // 2
      self.conv1 = nn.Sequential(_conv(arch.in_channels, half, 3, stride), _norm(half), nn.ReLU(),
                                 _conv(half, half, 3), _norm(half), nn.ReLU(),
                                 _conv(half, width, 3))
    else:
      self.conv1 = _conv(arch.in_channels, width, 7 if arch.stem == "imagenet" else 3, stride)
    self.bn1 = _norm(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1) if arch.stem == "imagenet" else nn.Identity()
    bottleneck = v["block_cls"] is resnet.Bottleneck
    inputs = width
    for stage, num_blocks in enumerate(v["stage_sizes"]):
      blocks = []
      for block in range(num_blocks):
        blocks.append(Block(inputs, width * 2**stage, 2 if stage and not block else 1, bottleneck,
                            v["groups"], v["width_per_group"], v["se"], v["avg_down"]))
        inputs = width * 2**stage * (resnet.Bottleneck.expansion if bottleneck else 1)
      setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
    self.num_stages = len(v["stage_sizes"])
    self.fc = nn.Linear(inputs, arch.num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for stage in range(self.num_stages):
      x = getattr(self, f"layer{stage + 1}")(x)
    return self.fc(x.mean(dim=(2, 3)))


class Deployed(nn.Module):
  """uint8 NHWC pictures to logits: `augment.preprocess` (x / 255, the bilinear resize as two
  constant matrices, (x - mean) / std), then NCHW into the network."""

  def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float],
               resize_h: np.ndarray | None = None, resize_w: np.ndarray | None = None):
    super().__init__()
    self.network = network
    self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
    self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
    self.resize = resize_h is not None
    if self.resize:
      self.register_buffer("resize_h", torch.tensor(np.asarray(resize_h, np.float32)))
      self.register_buffer("resize_w", torch.tensor(np.asarray(resize_w, np.float32)))

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.float32) / 255.0
    if self.resize:
      x = torch.einsum("sh,bhwc->bswc", self.resize_h, x)
      x = torch.einsum("tw,bswc->bstc", self.resize_w, x)
    x = (x - self.mean) / self.std
    return self.network(x.permute(0, 3, 1, 2))


def load_network(state_dict: dict, arch: Architecture) -> ResNet:
  """The network of `arch` holding state_dict (numpy arrays, torchvision's keys), in eval mode."""
  network = ResNet(arch)
  network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                          strict=True)
  return network.eval()
