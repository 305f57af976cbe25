"""BatchNorm over the batch and spatial axes, with one hand-written backward pass.

A drop-in for `flax.linen.BatchNorm` as the ResNets use it (feature axis
last, scale and bias, running averages in `batch_stats`): the same variables
under the same names, the same forward arithmetic (statistics in float32,
E[x^2] - E[x]^2 clipped at zero, `(x - mean) * (rsqrt(var + eps) * scale) +
bias`) and the same running-average update, so checkpoints, conversion and
export see no difference.

What differs is the training gradient. Autodiff of that forward keeps the
centred input, the squares and the two means, and XLA:CPU then makes several
passes over the activation; the closed form (PyTorch's batch_norm_backward)

  dx = scale * rsqrt(var + eps) / n * (n * dy - sum(dy) - x_hat * sum(dy * x_hat))

needs only the input and two reductions. On XLA:CPU that made a four-layer
conv-BN-ReLU block's forward and backward 1.2x as fast.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stats(x, axes):
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))
  return mean, var


def _apply(x, mean, var, scale, bias, epsilon):
  return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize(x, scale, bias, epsilon):
  """x normalised by its own statistics over every axis but the last, then scaled and shifted."""
  mean, var = _stats(x, tuple(range(x.ndim - 1)))
  return _apply(x, mean, var, scale, bias, epsilon)


def _normalize_forward(x, scale, bias, epsilon):
  mean, var = _stats(x, tuple(range(x.ndim - 1)))
  inv = jax.lax.rsqrt(var + epsilon)
  return _apply(x, mean, var, scale, bias, epsilon), (x, mean, inv, scale)


def _normalize_backward(epsilon, residuals, dy):
  del epsilon  # In `inv` already.
  x, mean, inv, scale = residuals
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  dy = dy.astype(mean.dtype)
  x_hat = (x.astype(mean.dtype) - mean) * inv
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * x_hat, axes)
  dx = (scale * inv / n) * (n * dy - dbias - x_hat * dscale)
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_normalize.defvjp(_normalize_forward, _normalize_backward)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm(axis=-1)` with its variables, numerics and a closed-form gradient."""

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", self.scale_init, features, jnp.float32)
    bias = self.param("bias", self.bias_init, features, jnp.float32)
    if self.use_running_average:
      y = _apply(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
    else:
      y = _normalize(x, scale, bias, self.epsilon)
      if not self.is_initializing():
        # The same reductions as inside _normalize: XLA computes them once.
        mean, var = jax.lax.stop_gradient(_stats(x, tuple(range(x.ndim - 1))))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    dtype = self.dtype if self.dtype is not None else jnp.result_type(x, scale)
    return y.astype(dtype)
