"""ResNets in Flax linen, laid out like torchvision's so weights map one to one.

Submodule names follow torchvision's `state_dict` keys with `.` replaced by
`_` (`layer1_0/conv1`, `layer2_0/downsample_conv`, `fc`), which keeps weight
conversion a pure renaming. Every padding is explicit and symmetric, as in
PyTorch, so that imported weights give the same logits.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any

# PyTorch's BatchNorm2d defaults: momentum 0.1 (Flax's 0.9) and eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Kaiming-normal with fan_out, as torchvision initialises its convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or projection shortcut."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides),
                  padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           padding=((0, 0), (0, 0)), name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (carrying the stride, as torchvision v1.5), 1x1 expand."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1), padding=((0, 0), (0, 0)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides),
                  padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, (1, 1), padding=((0, 0), (0, 0)), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides),
                           padding=((0, 0), (0, 0)), name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(residual + y)


def _last_bn_scale_init(zero: bool):
  return nn.initializers.zeros if zero else nn.initializers.ones


class ResNet(nn.Module):
  """ResNet v1.5 over NHWC images; returns float32 logits."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  stem: str = "cifar"
  width: int = 64
  zero_init_residual: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype)
    x = images_BHWC.astype(self.dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    else:
      raise ValueError(f"unknown stem {self.stem!r}: use 'cifar' or 'imagenet'")
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        x = self.block_cls(
            filters=self.width * 2**stage,
            strides=2 if stage > 0 and block == 0 else 1,
            conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
            name=f"layer{stage + 1}_{block}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
# One block per stage: a fast network for tests and smoke runs.
_ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)

MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "resnet_tiny": _ResNetTiny,
}
STEMS = ("cifar", "imagenet")


def create_model(name: str, num_classes: int, stem: str = "cifar", width: int = 64,
                 dtype: Any = jnp.float32, zero_init_residual: bool = False,
                 dropout_rate: float = 0.0) -> ResNet:
  """Returns the ResNet called `name`; apply it as `model.apply(variables, x, train=False)`."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
  if stem not in STEMS:
    raise ValueError(f"unknown stem {stem!r}: choose 'cifar' or 'imagenet'")
  return MODELS[name](num_classes=num_classes, stem=stem, width=width, dtype=dtype,
                      zero_init_residual=zero_init_residual, dropout_rate=dropout_rate)
