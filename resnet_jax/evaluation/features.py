r"""Backbone features: the output of each stage, for detection and segmentation heads.

  backbone = resnet_jax.load_backbone("torchvision:resnet50")   # or a workdir, or a step folder
  features = backbone(backbone.preprocess(images_BHWC_uint8))
  features["layer1"].shape   # [B, H/4, W/4, 256]; layer2: /8, layer3: /16, layer4: /32

As torchvision's `IntermediateLayerGetter(model, {"layer1": ..., "layer4": ...})`
and timm's `features_only=True, out_indices=(1, 2, 3, 4)` give them, but NHWC:
each stage's last block, after its ReLU. The strides are 4, 8, 16, 32 with the
ImageNet stem (every model of `resnet_jax.MODELS` with stem='imagenet'); the
CIFAR stem does not downsample, so there they are 1, 2, 4, 8.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.checkpoints.restore import load_model
from resnet_jax.data import augment
from resnet_jax.models import resnet


def stage_features(model: resnet.ResNet, variables: Mapping[str, Any],
                   images_BHWC: jax.Array) -> dict[str, jax.Array]:
  """{'layer1': ..., 'layer4': ...}: each stage's output for normalised float images.

  Args:
    model: a `resnet_jax.create_model(...)` network.
    variables: its {'params', 'batch_stats'}.
    images_BHWC: float images normalised as the model was trained (see
      `Backbone.preprocess`).
  """
  last = {f"layer{stage + 1}_{blocks - 1}": f"layer{stage + 1}"
          for stage, blocks in enumerate(model.stage_sizes)}
  _, state = model.apply(
      {"params": variables["params"], "batch_stats": variables["batch_stats"]}, images_BHWC,
      train=False, mutable=["intermediates"],
      capture_intermediates=lambda module, method: method == "__call__" and module.name in last)
  found = state["intermediates"]
  return {stage: found[block]["__call__"][0] for block, stage in last.items()}


@dataclasses.dataclass
class Backbone:
  """A checkpoint's network as a feature extractor: call it on preprocessed images."""
  model: resnet.ResNet
  variables: dict
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int = 0  # Resize before the model (the run's config.image_size); 0: none.
  _apply: Callable | None = None

  def preprocess(self, images_BHWC: np.ndarray) -> jax.Array:
    """uint8 images to the normalised floats the network was trained on."""
    return augment.preprocess(images_BHWC, self.mean, self.std, self.image_size)

  def __call__(self, images_BHWC: jax.Array) -> dict[str, jax.Array]:
    if self._apply is None:
      self._apply = jax.jit(lambda v, x: stage_features(self.model, v, x))
    return self._apply(self.variables, images_BHWC)


def load_backbone(path: str) -> Backbone:
  """The network of a workdir, checkpoint folder or step folder (its EMA weights if any).

  Published names (`torchvision:resnet50`) go through `resnet_jax.pretrained_checkpoint`
  first, which returns such a workdir.
  """
  loaded = load_model(path, action="reading features with", dtype=jnp.float32)
  config, variables, model = loaded.config, loaded.variables, loaded.model
  return Backbone(model, variables, tuple(config.get("mean") or (0.0,) * 3),
                  tuple(config.get("std") or (1.0,) * 3), int(config.get("image_size") or 0))
