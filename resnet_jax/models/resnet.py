"""ResNets in Flax linen, laid out like torchvision's (and timm's) so weights map one to one.

Submodule names follow torchvision's `state_dict` keys with `.` replaced by
`_` (`layer1_0/conv1`, `layer2_0/downsample_conv`, `fc`), which keeps weight
conversion a renaming; the few modules that sit in a PyTorch `Sequential`
have explicit names (`stem_conv1`, `downsample_pooled_conv`) that
`resnet_jax.interop` maps to its indices. Every padding is explicit and
symmetric, as in PyTorch, so that imported weights give the same logits.

The family is one `ResNet` with a few switches, each a published variant:
- `groups`, `width_per_group`: ResNeXt and Wide ResNet (torchvision's
  Bottleneck: the 3x3 convolution has int(planes * width_per_group / 64) *
  groups channels in `groups` groups).
- `deep_stem`, `avg_down`: ResNet-D (timm's `resnet50d`, Bag of Tricks, He et
  al. 2019): three 3x3 convolutions (width/2, width/2, width) instead of the
  7x7, and a 2x2 average pool before a stride-1 projection in the shortcut.
- `se`: squeeze-and-excitation (Hu et al. 2018) as timm's SEModule: global
  mean, 1x1 reduce to channels/16 (rounded to a multiple of 8), ReLU, 1x1
  expand, sigmoid gate, applied to the residual branch before the sum.
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
SE_RATIO, SE_DIVISOR = 1 / 16, 8  # timm's SEModule defaults (rd_ratio, rd_divisor).

# Kaiming-normal with fan_out, as torchvision initialises its convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def se_channels(channels: int) -> int:
  """timm's make_divisible(channels / 16, 8, round_limit=0): the nearest multiple of 8, >= 8."""
  value = channels * SE_RATIO
  return max(SE_DIVISOR, int(value + SE_DIVISOR / 2) // SE_DIVISOR * SE_DIVISOR)


class SqueezeExcite(nn.Module):
  """Channel gates from the global mean: reduce, ReLU, expand, sigmoid."""
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(self.conv(se_channels(channels), (1, 1), use_bias=True, padding=((0, 0), (0, 0)),
                          name="fc1")(s))
    s = self.conv(channels, (1, 1), use_bias=True, padding=((0, 0), (0, 0)), name="fc2")(s)
    return x * nn.sigmoid(s)


class _Block(nn.Module):
  """What both blocks share: the fields, the shortcut and the optional SE gate."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  zero_init_residual: bool = False
  groups: int = 1
  width_per_group: int = 64
  avg_down: bool = False
  se: bool = False

  def finish(self, residual, y):
    """SE gate on the branch, shortcut projection when shapes differ, sum and ReLU."""
    if self.se:
      y = SqueezeExcite(self.conv, name="se")(y)
    if residual.shape != y.shape:
      residual = self.shortcut(residual, y.shape[-1])
    return nn.relu(residual + y)

  def shortcut(self, x, channels: int):
    if not self.avg_down:
      x = self.conv(channels, (1, 1), (self.strides, self.strides), padding=((0, 0), (0, 0)),
                    name="downsample_conv")(x)
      return self.norm(name="downsample_bn")(x)
    if self.strides > 1:
      # timm's AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False): a last, partial
      # window on odd sizes averages only what it covers.
      pads = [(0, -size % self.strides) for size in x.shape[1:3]]
      x = nn.avg_pool(x, (2, 2), (self.strides, self.strides), padding=pads,
                      count_include_pad=False)
    x = self.conv(channels, (1, 1), padding=((0, 0), (0, 0)), name="downsample_pooled_conv")(x)
    return self.norm(name="downsample_pooled_bn")(x)


class BasicBlock(_Block):
  """Two 3x3 convolutions with an identity or projection shortcut."""
  expansion = 1

  @nn.compact
  def __call__(self, x):
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError("BasicBlock has no groups or width_per_group (as in torchvision): use "
                       "a Bottleneck model")
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides),
                  padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    return self.finish(x, y)


class Bottleneck(_Block):
  """1x1 reduce, 3x3 (grouped, carrying the stride, as torchvision v1.5), 1x1 expand."""
  expansion = 4

  @nn.compact
  def __call__(self, x):
    width = int(self.filters * self.width_per_group / 64) * self.groups
    y = self.conv(width, (1, 1), padding=((0, 0), (0, 0)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(width, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1)),
                  feature_group_count=self.groups, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, (1, 1), padding=((0, 0), (0, 0)), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    return self.finish(x, y)


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
  groups: int = 1
  width_per_group: int = 64
  deep_stem: bool = False
  avg_down: bool = False
  se: bool = False

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=conv_kernel_init)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype)
    x = images_BHWC.astype(self.dtype)
    if self.stem not in STEMS:
      raise ValueError(f"unknown stem {self.stem!r}: use 'cifar' or 'imagenet'")
    strides = 2 if self.stem == "imagenet" else 1
    if self.deep_stem:
      for i, channels in enumerate((self.width // 2, self.width // 2, self.width)):
        if i:
          x = nn.relu(norm(name=f"stem_bn{i}")(x))
        x = conv(channels, (3, 3), (strides, strides) if i == 0 else (1, 1),
                 padding=((1, 1), (1, 1)), name=f"stem_conv{i + 1}")(x)
    elif self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
    else:
      x = conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        x = self.block_cls(
            filters=self.width * 2**stage,
            strides=2 if stage > 0 and block == 0 else 1,
            conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
            groups=self.groups, width_per_group=self.width_per_group, avg_down=self.avg_down,
            se=self.se, name=f"layer{stage + 1}_{block}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)
# torchvision's ResNeXt (Xie et al. 2017) and Wide ResNet-50/101-2 (Zagoruyko & Komodakis 2016).
ResNeXt50_32x4d = functools.partial(ResNet50, groups=32, width_per_group=4)
ResNeXt101_32x8d = functools.partial(ResNet101, groups=32, width_per_group=8)
ResNeXt101_64x4d = functools.partial(ResNet101, groups=64, width_per_group=4)
WideResNet50_2 = functools.partial(ResNet50, width_per_group=128)
WideResNet101_2 = functools.partial(ResNet101, width_per_group=128)
# timm's ResNet-D and squeeze-and-excitation ResNet.
ResNet50D = functools.partial(ResNet50, deep_stem=True, avg_down=True)
SEResNet50 = functools.partial(ResNet50, se=True)
# One block per stage: a fast network for tests and smoke runs.
_ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block_cls=BasicBlock)

MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "resnext50_32x4d": ResNeXt50_32x4d,
    "resnext101_32x8d": ResNeXt101_32x8d,
    "resnext101_64x4d": ResNeXt101_64x4d,
    "wide_resnet50_2": WideResNet50_2,
    "wide_resnet101_2": WideResNet101_2,
    "resnet50d": ResNet50D,
    "seresnet50": SEResNet50,
    "resnet_tiny": _ResNetTiny,
}
STEMS = ("cifar", "imagenet")
# The switches of `ResNet` that tell the family's members apart, with their defaults.
VARIANT_FIELDS = {"groups": 1, "width_per_group": 64, "deep_stem": False, "avg_down": False,
                  "se": False}


def variant(name: str) -> dict[str, Any]:
  """The structure of MODELS[name]: stage_sizes, block_cls and every VARIANT_FIELDS value."""
  keywords = MODELS[name].keywords  # functools.partial merges nested partials' keywords.
  return {"stage_sizes": tuple(keywords["stage_sizes"]), "block_cls": keywords["block_cls"],
          **{field: keywords.get(field, default) for field, default in VARIANT_FIELDS.items()}}


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
