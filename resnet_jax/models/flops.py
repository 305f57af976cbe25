"""Counting a model's FLOPs by formula, independent of the backend's cost model.

XLA's GPU cost analysis does not see inside cuDNN convolutions (it reports a
few MFLOP for a ResNet-18 step), so utilisation figures use this count:
2 FLOPs per multiply-add of every convolution and dense layer, forward;
a training step is taken as 3x forward (the backward pass computes
gradients for both inputs and weights). Normalisation, activations and
pooling are left out, as is usual for MFU.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def forward_flops_per_image(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
  """FLOPs of one image's forward pass through the convolutions and dense layers."""
  total = 0

  def count(next_fun, args, kwargs, context):
    nonlocal total
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      x = args[0]
      kernel_elements = int(np.prod(module.kernel_size)) if isinstance(module, nn.Conv) else 1
      outputs_per_image = int(np.prod(out.shape[1:]))
      total += 2 * outputs_per_image * kernel_elements * x.shape[-1]
    return out

  images = jnp.zeros((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  with nn.intercept_methods(count):
    jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  return total


def train_flops_per_image(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
  """Forward plus backward: 3x the forward count."""
  return 3 * forward_flops_per_image(model, input_shape)
