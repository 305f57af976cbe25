"""Our BatchNorm against flax.linen.BatchNorm, which it replaces: variables, forward, running
averages and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import batchnorm

MOMENTUM, EPSILON = 0.9, 1e-5


def pair(**kwargs):
  ours = batchnorm.BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
  flax = nn.BatchNorm(momentum=MOMENTUM, epsilon=EPSILON, **kwargs)
  return ours, flax


def variables_with_statistics(module, x):
  """Initialised variables with non-trivial scale, bias and running averages."""
  variables = module.init(jax.random.key(0), x)
  rng = np.random.default_rng(5)
  c = x.shape[-1]
  return {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
                     "bias": jnp.asarray(rng.normal(size=c), jnp.float32)},
          "batch_stats": {"mean": jnp.asarray(rng.normal(size=c), jnp.float32),
                          "var": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32)}}, variables


@pytest.fixture
def x():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(3.0, 2.0, (6, 5, 4, 7)), jnp.float32)  # Off-centre, not unit.


def test_same_variables_and_initial_values(x):
  ours, flax = pair(use_running_average=False)
  a, b = ours.init(jax.random.key(0), x), flax.init(jax.random.key(0), x)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert u.shape == v.shape and u.dtype == v.dtype
    np.testing.assert_array_equal(u, v)
  zero_scale = batchnorm.BatchNorm(scale_init=nn.initializers.zeros).init(jax.random.key(0), x)
  assert not zero_scale["params"]["scale"].any()


def test_training_forward_and_running_averages_equal_flax(x):
  ours, flax = pair(use_running_average=False)
  variables, _ = variables_with_statistics(flax, x)
  ya, new_a = ours.apply(variables, x, mutable=["batch_stats"])
  yb, new_b = flax.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(ya, yb, rtol=1e-6, atol=1e-6)
  for u, v in zip(jax.tree.leaves(new_a), jax.tree.leaves(new_b)):
    np.testing.assert_allclose(u, v, rtol=1e-6)
  assert not np.allclose(new_a["batch_stats"]["mean"], variables["batch_stats"]["mean"])


def test_eval_forward_equals_flax(x):
  ours, flax = pair(use_running_average=True)
  variables, _ = variables_with_statistics(flax, x)
  np.testing.assert_array_equal(ours.apply(variables, x), flax.apply(variables, x))


def test_gradients_equal_flax_autodiff(x):
  ours, flax = pair(use_running_average=False)
  variables, _ = variables_with_statistics(flax, x)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

  def loss(module, params, inputs):
    y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, inputs,
                        mutable=["batch_stats"])
    return jnp.sum(y * cotangent)

  ga = jax.grad(lambda p, i: loss(ours, p, i), argnums=(0, 1))(variables["params"], x)
  gb = jax.grad(lambda p, i: loss(flax, p, i), argnums=(0, 1))(variables["params"], x)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    scale = float(jnp.max(jnp.abs(v)))
    np.testing.assert_allclose(u, v, atol=2e-5 * scale)
  assert float(jnp.max(jnp.abs(ga[1]))) > 0.01  # Not a vanishing gradient.


def test_half_precision_keeps_float32_statistics(x):
  ours, flax = pair(use_running_average=False, dtype=jnp.bfloat16)
  variables, _ = variables_with_statistics(flax, x)
  low = x.astype(jnp.bfloat16)
  ya, new_a = ours.apply(variables, low, mutable=["batch_stats"])
  yb, new_b = flax.apply(variables, low, mutable=["batch_stats"])
  assert ya.dtype == yb.dtype == jnp.bfloat16
  assert new_a["batch_stats"]["var"].dtype == jnp.float32
  np.testing.assert_allclose(np.float32(ya), np.float32(yb), atol=0.03)
  for u, v in zip(jax.tree.leaves(new_a), jax.tree.leaves(new_b)):
    np.testing.assert_allclose(u, v, rtol=1e-5)
  grad = jax.grad(lambda i: jnp.sum(ours.apply(variables, i, mutable=["batch_stats"])[0]
                                    .astype(jnp.float32)))(low)
  assert grad.dtype == jnp.bfloat16
