"""Class-weighted and multi-label training losses, against scikit-learn and optax, and the
compiled step that binds them (class_balance=loss and sample, multi-hot targets)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as sk
from sklearn.utils.class_weight import compute_class_weight

from resnet_jax import sharding
from resnet_jax.config import configuration
from resnet_jax.data import augment
from resnet_jax.models import build
from resnet_jax.train import losses, steps
from tests.conftest import tiny_config

BATCH, CLASSES = 12, 4


def _logits_and_labels(seed: int = 0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, (BATCH, CLASSES)).astype(np.float32)
  labels = rng.choice(CLASSES, BATCH, p=[0.6, 0.25, 0.1, 0.05]).astype(np.int32)
  labels[:CLASSES] = np.arange(CLASSES)  # Every class at least once.
  return logits, labels


def _softmax(logits):
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def test_class_weighted_loss_is_scikit_learns_weighted_log_loss_over_the_batch_size():
  logits, labels = _logits_and_labels()
  train_labels = np.repeat(np.arange(CLASSES), [60, 25, 10, 5])
  weights = compute_class_weight("balanced", classes=np.arange(CLASSES), y=train_labels)
  spec = losses.LossSpec(class_weights=tuple(weights))
  loss, terms = losses.training_loss(logits, jax.nn.one_hot(labels, CLASSES), None, spec)
  sample_weight = weights[labels]
  # scikit-learn divides by the weights' sum; the documented mean divides by the batch size.
  expected = (sk.log_loss(labels, _softmax(logits), sample_weight=sample_weight,
                          labels=range(CLASSES)) * sample_weight.sum() / BATCH)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert terms == {}
  unweighted, _ = losses.training_loss(logits, jax.nn.one_hot(labels, CLASSES), None,
                                       losses.LossSpec())
  assert float(unweighted) == pytest.approx(sk.log_loss(labels, _softmax(logits),
                                                        labels=range(CLASSES)), rel=1e-5)


def test_a_soft_targets_weight_is_its_mixture_of_class_weights():
  logits, labels = _logits_and_labels(1)
  partner = np.roll(labels, 1)
  lam = np.linspace(0.1, 0.9, BATCH)[:, None]
  eye = np.eye(CLASSES)
  targets = optax.smooth_labels(lam * eye[labels] + (1 - lam) * eye[partner], 0.1)
  weights = np.array([0.5, 1.0, 2.0, 4.0])
  loss, _ = losses.training_loss(logits, targets, None, losses.LossSpec(class_weights=tuple(weights)))
  per_example = -(np.asarray(targets) * np.log(_softmax(logits))).sum(axis=1)
  expected = np.mean((np.asarray(targets) @ weights) * per_example)
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_class_weights_multiply_the_distillation_term_too():
  logits, labels = _logits_and_labels(2)
  teacher = np.random.default_rng(3).normal(0, 2, logits.shape).astype(np.float32)
  weights = np.array([0.5, 1.0, 2.0, 4.0])
  spec = losses.LossSpec(distill_alpha=0.7, distill_temperature=2.0, class_weights=tuple(weights))
  targets = jax.nn.one_hot(labels, CLASSES)
  loss, terms = losses.training_loss(logits, targets, teacher, spec)
  label_b = -np.log(_softmax(logits))[np.arange(BATCH), labels]
  p_t, p_s = _softmax(teacher / 2), _softmax(logits / 2)
  kl_b = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1) * 4
  expected = np.mean(weights[labels] * (0.3 * label_b + 0.7 * kl_b))
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(terms["label_loss"]) == pytest.approx(label_b.mean(), rel=1e-5)  # Unweighted.


def test_multi_label_loss_is_binary_cross_entropy_over_classes_and_examples():
  logits, _ = _logits_and_labels(4)
  multi_hot = (np.random.default_rng(5).random(logits.shape) < 0.4).astype(np.float32)
  loss, _ = losses.training_loss(logits, multi_hot, None, losses.LossSpec(multi_label=True))
  probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = sk.log_loss(multi_hot.ravel(), probabilities.ravel(), labels=[0, 1])
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_multi_hot_smoothing_smooths_each_class_as_a_two_class_one_hot():
  multi_hot = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  smoothed = losses.multi_hot_targets(multi_hot, 0.2)
  pairs = optax.smooth_labels(jnp.stack([multi_hot, 1 - multi_hot], axis=-1), 0.2)
  np.testing.assert_allclose(smoothed, pairs[..., 0], rtol=1e-6)


def test_multi_label_accuracy_is_scikit_learns_exact_match():
  logits, _ = _logits_and_labels(6)
  multi_hot = (np.random.default_rng(7).random(logits.shape) < 0.5).astype(np.float32)
  multi_hot[:4] = logits[:4] > 0  # Some exact matches.
  spec = losses.LossSpec(multi_label=True, multi_label_threshold=0.5)
  accuracy = losses.train_accuracy(jnp.asarray(logits), jnp.asarray(multi_hot), spec)
  predicted = (1 / (1 + np.exp(-logits)) > 0.5).astype(int)
  assert float(accuracy) == pytest.approx(sk.accuracy_score(multi_hot.astype(int), predicted))


def test_from_config_takes_the_weights_of_the_training_counts():
  config = _resolved(tiny_config(class_balance="loss"), [40, 10, 10, 0, 20, 0, 0, 0, 0, 0])
  spec = losses.LossSpec.from_config(config)
  y = np.repeat(np.arange(10), config.train_class_counts)
  present = np.unique(y)
  np.testing.assert_allclose(np.array(spec.class_weights)[present],
                             compute_class_weight("balanced", classes=present, y=y), rtol=1e-6)
  assert losses.LossSpec.from_config(_resolved(tiny_config(), [8] * 10)).class_weights is None


# Through the compiled step ---------------------------------------------------------------


def _resolved(config, counts, multi_label=False):
  return configuration.resolve(config, {
      "num_classes": 10, "class_names": [f"c{i}" for i in range(10)], "mean": (0.5,) * 3,
      "std": (0.25,) * 3, "input_shape": (16, 16, 3), "num_train_examples": 64,
      "train_class_counts": counts, "multi_label": multi_label})


def _one_step(config, labels):
  mesh = sharding.create_mesh()
  schedule = steps.learning_rate_schedule(config, 4, 16)
  state = steps.create_train_state(config, build.create_model(config), schedule, mesh)
  rng = np.random.default_rng(0)
  data = {"image": rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8), "label": labels}
  data = {k: sharding.put_replicated(v, mesh) for k, v in data.items()}
  state, metrics = steps.compile_train_step(config, mesh, schedule)(state, data)
  return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.slow
def test_equal_counts_give_weights_of_one_and_the_unweighted_step():
  labels = np.repeat(np.arange(8), 8).astype(np.int32)  # 8 of 10 classes, 8 examples each.
  counts = np.bincount(labels, minlength=10).tolist()
  plain, plain_metrics = _one_step(_resolved(tiny_config(), counts), labels)
  weighted, metrics = _one_step(_resolved(tiny_config(class_balance="loss"), counts), labels)
  assert float(metrics["train_loss"]) == float(plain_metrics["train_loss"])
  jax.tree.map(np.testing.assert_array_equal, weighted, plain)
  # The same data, weighted as if class 0 were 5 times as common: another loss.
  skewed = _resolved(tiny_config(class_balance="loss"), [40] + counts[1:])
  _, skewed_metrics = _one_step(skewed, labels)
  assert float(skewed_metrics["train_loss"]) != pytest.approx(float(plain_metrics["train_loss"]))


@pytest.mark.slow
def test_sampled_steps_gather_the_balanced_indices_of_augment(monkeypatch):
  labels = np.array([0] * 56 + [1] * 4 + [2] * 4, np.int32)
  counts = np.bincount(labels, minlength=10).tolist()
  config = _resolved(tiny_config(class_balance="sample", batch_size=16), counts)
  drawn, balanced = [], augment.balanced_batch_indices

  def recorded(key, step, labels_N, class_counts, batch_size):
    indices = balanced(key, step, labels_N, class_counts, batch_size)
    drawn.append((labels_N.shape, tuple(class_counts), batch_size))
    return indices

  monkeypatch.setattr(augment, "balanced_batch_indices", recorded)
  _, metrics = _one_step(config, labels)
  assert drawn == [((64,), tuple(counts), 16)]  # Traced once, on the split's labels.
  assert np.isfinite(float(metrics["train_loss"]))


@pytest.mark.slow
def test_a_multi_label_step_trains_on_mixed_smoothed_multi_hot_targets():
  rng = np.random.default_rng(1)
  multi_hot = (rng.random((64, 10)) < 0.3).astype(np.float32)
  config = _resolved(tiny_config(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1),
                     multi_hot.sum(axis=0).astype(int).tolist(), multi_label=True)
  spec = losses.LossSpec.from_config(config)
  assert spec.multi_label
  _, metrics = _one_step(config, multi_hot)
  # Binary cross-entropy of ~zero logits is about log 2 per class, far from a softmax's log 10.
  assert float(metrics["train_loss"]) == pytest.approx(np.log(2), abs=0.3)
  assert 0 <= float(metrics["train_accuracy"]) <= 1
