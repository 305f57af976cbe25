"""A model from a resolved config, the state that training and evaluation carry, and the loss.

`TrainState` is Flax's with BatchNorm statistics and an optional weight EMA;
its serialisation leaves the EMA out when there is none, so checkpoints of
runs without EMA keep the layout they always had.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

from resnet_jax.models import ema as ema_lib, resnet


class TrainState(train_state.TrainState):
  """Flax's TrainState with BatchNorm statistics and, when config.ema_decay > 0, a weight EMA."""
  batch_stats: Any
  ema: Any = None  # {"params", "batch_stats"}; see resnet_jax/models/ema.py.
  # From config.freeze_backbone; static (part of the compiled program), not saved.
  frozen_backbone: bool = flax.struct.field(pytree_node=False, default=False)


# Saved without `ema` when there is none, so that checkpoints of runs without EMA
# keep the layout they had before it existed, and either resumes the other.
serialization.register_serialization_state(TrainState, ema_lib.state_to_dict,
                                           ema_lib.state_from_dict, override=True)


CONV_INITS = ("torchvision", "pytorch")


def pytorch_default_init(params: Any, key: jax.Array) -> Any:
  """params with every conv kernel and the classifier drawn as torch.nn's reset_parameters does.

  torch.nn.Conv2d and nn.Linear draw weights by kaiming_uniform_(a=sqrt(5)),
  i.e. U(-b, b) with b = gain x sqrt(3 / fan_in), gain = sqrt(2 / (1 + 5)): b =
  1 / sqrt(fan_in); Linear's bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Flax's
  kernels are HWIO (conv) and IO (dense): fan_in is every axis but the last.
  BatchNorm keeps scale 1 and bias 0, as in torch.
  """
  flat = flax.traverse_util.flatten_dict(params)
  fan_in = {path[:-1]: int(np.prod(value.shape[:-1])) for path, value in flat.items()
            if path[-1] == "kernel"}
  out = {}
  for i, (path, value) in enumerate(sorted(flat.items())):
    if path[-1] in ("kernel", "bias") and path[:-1] in fan_in:
      bound = 1.0 / np.sqrt(fan_in[path[:-1]])
      value = jax.random.uniform(jax.random.fold_in(key, i), value.shape, value.dtype,
                                 -bound, bound)
    out[path] = value
  return flax.traverse_util.unflatten_dict(out)


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) the model sees: the dataset's images, resized when image_size is set."""
  height, width, channels = config.input_shape
  size = config.image_size
  return (size or height, size or width, channels)


def create_model(config: ml_collections.ConfigDict) -> resnet.ResNet:
  return resnet.create_model(config.model, config.num_classes, stem=config.stem, width=config.width,
                             dtype=compute_dtype(config),
                             zero_init_residual=config.zero_init_residual,
                             dropout_rate=config.dropout_rate)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float) -> jax.Array:
  return optax.softmax_cross_entropy(logits, smoothed_targets(labels, num_classes, label_smoothing))


def smoothed_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)


@contextlib.contextmanager
def dropout_in_eval_mode() -> Iterator[None]:
  """Inside, an apply with train=False still drops out: BatchNorm frozen, dropout on.

  For head-only fine-tuning (freeze_backbone): the backbone runs as a fixed
  feature extractor on its running statistics, while the head's
  `dropout_rate` regularises as it does in full training. Each
  `nn.Dropout` built deterministic is run as Flax's own dropout in training
  mode with the rng it would draw.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (isinstance(module, nn.Dropout) and context.method_name == "__call__"
        and module.deterministic and module.rate > 0):
      key = module.make_rng(module.rng_collection)
      # Built non-deterministic, this inner Dropout passes through the interceptor untouched.
      return nn.Dropout(module.rate, deterministic=False, rng_collection=module.rng_collection
                        ).apply({}, *args, rngs={module.rng_collection: key})
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    yield
