"""Model shapes, torchvision parameter counts, and init options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import resnet


def param_count(model, image_size=224):
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"]))


# torchvision.models.resnetNN(num_classes=1000) parameter counts.
@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808)])
def test_parameter_counts_match_torchvision(name, expected):
  assert param_count(resnet.create_model(name, 1000, stem="imagenet")) == expected


def test_cifar_stem_count():
  # The 3x3 stem has 3*3*3*64 weights instead of 7*7*3*64; 10 classes instead of 1000.
  expected = 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - 513 * 990
  assert param_count(resnet.create_model("resnet18", 10, stem="cifar"), 32) == expected


@pytest.mark.parametrize("name,stem,size", [
    ("resnet18", "cifar", 32), ("resnet18", "imagenet", 64), ("resnet50", "cifar", 16)])
def test_logits_shape_and_batch_stats(name, stem, size):
  model = resnet.create_model(name, 7, stem=stem, width=8)
  images = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert "batch_stats" in variables
  logits = model.apply(variables, images, train=False)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), updates["batch_stats"],
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_imagenet_stem_downsamples_by_four():
  model = resnet.create_model("resnet_tiny", 10, stem="imagenet", width=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  _, state = model.apply(variables, jnp.zeros((1, 64, 64, 3)), capture_intermediates=True,
                         mutable=["intermediates"])
  assert state["intermediates"]["layer1_0"]["__call__"][0].shape == (1, 16, 16, 4)


def test_zero_init_residual_zeros_last_bn_scale():
  model = resnet.create_model("resnet18", 10, width=4, zero_init_residual=True)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert not np.any(params["layer1_0"]["bn2"]["scale"])
  assert np.all(params["layer1_0"]["bn1"]["scale"] == 1)


def test_bf16_compute_keeps_float32_params():
  model = resnet.create_model("resnet_tiny", 10, width=4, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert model.apply(variables, jnp.ones((1, 32, 32, 3)), train=False).dtype == jnp.float32


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="unknown model 'resnet19'"):
    resnet.create_model("resnet19", 10)
  with pytest.raises(ValueError, match="unknown stem"):
    resnet.create_model("resnet18", 10, stem="vit")
