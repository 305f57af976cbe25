"""Knowledge distillation: the loss against PyTorch's KLDivLoss, the teacher's view of the
student's augmented batch, and the compiled step with a teacher."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import sharding
from resnet_jax.data import augment
from resnet_jax.models import build
from resnet_jax.train import losses, steps, teacher as teacher_lib
from tests.conftest import resolved_config, tiny_config

# The loss ------------------------------------------------------------------------


def _logits(seed: int, shape=(8, 10), scale=3.0) -> np.ndarray:
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _soft_targets(seed: int, shape=(8, 10)) -> np.ndarray:
  weights = np.random.default_rng(seed).uniform(0.0, 1.0, shape) ** 4  # Peaked, as mixed labels.
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_distillation_kl_is_torch_kldivloss_times_t_squared(temperature):
  torch = pytest.importorskip("torch", reason="needs PyTorch (the 'torch' extra) for KLDivLoss")
  student, teacher = _logits(0), _logits(1)
  kl = torch.nn.KLDivLoss(reduction="batchmean", log_target=False)
  expected = float(kl(torch.log_softmax(torch.from_numpy(student) / temperature, -1),
                      torch.softmax(torch.from_numpy(teacher) / temperature, -1))
                   ) * temperature ** 2
  ours = losses.distillation_kl(jnp.asarray(student), jnp.asarray(teacher), temperature)
  assert ours.shape == (8,)
  np.testing.assert_allclose(float(ours.mean()), expected, rtol=1e-5)
  loss, terms = losses.training_loss(jnp.asarray(student), jnp.asarray(_soft_targets(2)),
                                     jnp.asarray(teacher), losses.LossSpec(1.0, temperature))
  np.testing.assert_allclose([float(loss), float(terms["distill_loss"])], [expected] * 2, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_training_loss_weighs_distillation_alpha_and_labels_one_minus_alpha(alpha):
  torch = pytest.importorskip("torch", reason="needs PyTorch (the 'torch' extra) for its losses")
  student, teacher, targets = _logits(3), _logits(4), _soft_targets(5)
  s, t, y = map(torch.from_numpy, (student, teacher, targets))
  temperature = 2.0
  label = float(torch.nn.functional.cross_entropy(s, y))  # Probabilities as targets.
  kl = torch.nn.KLDivLoss(reduction="batchmean")
  distill = float(kl(torch.log_softmax(s / temperature, -1),
                     torch.softmax(t / temperature, -1))) * temperature ** 2
  loss, terms = losses.training_loss(jnp.asarray(student), jnp.asarray(targets),
                                     jnp.asarray(teacher), losses.LossSpec(alpha, temperature))
  np.testing.assert_allclose(float(loss), (1 - alpha) * label + alpha * distill, rtol=1e-5)
  np.testing.assert_allclose([float(terms["label_loss"]), float(terms["distill_loss"])],
                             [label, distill], rtol=1e-5)
  # Without a teacher: the label loss alone, whatever alpha says.
  plain, no_terms = losses.training_loss(jnp.asarray(student), jnp.asarray(targets), None,
                                         losses.LossSpec(alpha, temperature))
  np.testing.assert_allclose(float(plain), label, rtol=1e-5)
  assert no_terms == {}


def test_loss_spec_reads_the_config():
  spec = losses.LossSpec.from_config(tiny_config(distill_alpha=0.25, distill_temperature=3.0))
  assert spec == losses.LossSpec(0.25, 3.0)


# What the teacher sees -------------------------------------------------------------

STUDENT_MEAN, STUDENT_STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
TEACHER_MEAN, TEACHER_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cropped_batch(seed: int = 0) -> jax.Array:
  raw = np.random.default_rng(seed).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  return augment.random_crop_flip(jax.random.key(seed), jnp.asarray(raw), 4, True)


@pytest.mark.parametrize("side", [16, 24, 12])
def test_teacher_pictures_are_the_crop_in_its_own_normalisation_and_side(side):
  cropped = _cropped_batch()
  student = augment.preprocess(cropped, STUDENT_MEAN, STUDENT_STD)
  ours = teacher_lib.pictures(student, STUDENT_MEAN, STUDENT_STD, TEACHER_MEAN, TEACHER_STD,
                              (side, side))
  # What the data pipeline itself makes of the same crop for a model of that side and statistics.
  expected = augment.preprocess(cropped, TEACHER_MEAN, TEACHER_STD, image_size=side)
  assert ours.shape == expected.shape == (6, side, side, 3)
  np.testing.assert_allclose(ours, expected, atol=2e-5)


def test_teacher_pictures_of_a_mixed_batch_are_the_mix_of_its_pictures():
  """Cutout, mixup and CutMix of the student's batch reach the teacher as they are."""
  cropped = _cropped_batch(1)
  targets = jax.nn.one_hot(jnp.arange(6) % 3, 10)
  key, cutout_key = jax.random.key(7), jax.random.key(8)

  def augmented(mean, std):
    images = augment.cutout(cutout_key, augment.preprocess(cropped, mean, std), 6)
    return augment.mix(key, images, targets, 0.4, 1.0)[0]

  ours = teacher_lib.pictures(augmented(STUDENT_MEAN, STUDENT_STD), STUDENT_MEAN, STUDENT_STD,
                              TEACHER_MEAN, TEACHER_STD, (16, 16))
  expected = augmented(TEACHER_MEAN, TEACHER_STD)
  # Cutout's square is the student's mean colour, which the teacher's normalisation moves.
  square = np.asarray(augmented(STUDENT_MEAN, STUDENT_STD) == 0).all(-1)
  np.testing.assert_allclose(np.asarray(ours)[~square], np.asarray(expected)[~square], atol=2e-5)
  mean_colour = (np.asarray(STUDENT_MEAN) - TEACHER_MEAN) / TEACHER_STD
  assert square.any()
  np.testing.assert_allclose(np.asarray(ours)[square],
                             np.broadcast_to(mean_colour, (square.sum(), 3)), atol=2e-5)


# The compiled step with a teacher -------------------------------------------------------

NUM_EXAMPLES = 64


def _student(**overrides):
  """(config, state, data, mesh) of a resnet_tiny on 64 random 16x16 pictures."""
  config = resolved_config(tiny_config(**overrides), size=16, num_train_examples=NUM_EXAMPLES)
  mesh = sharding.create_mesh()
  schedule = steps.learning_rate_schedule(config, NUM_EXAMPLES // config.batch_size, 8)
  state = steps.create_train_state(config, build.create_model(config), schedule, mesh)
  rng = np.random.default_rng(0)
  data = {"image": rng.integers(0, 256, (NUM_EXAMPLES, 16, 16, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (NUM_EXAMPLES,), dtype=np.int32)}
  data = {k: sharding.put_replicated(v, mesh) for k, v in data.items()}
  return config, schedule, state, data, mesh


def _teacher(config, mesh, variables=None, seed=1) -> teacher_lib.Teacher:
  """A teacher of the student's architecture and statistics: a copy of `variables`, or fresh
  ones drawn from seed."""
  model = build.create_model(config)
  if variables is None:
    other = ml_collections.ConfigDict(config.to_dict())
    other.seed = seed
    variables = steps.run_unoptimized(steps.init_variables_fn(other, model))
  # Copies: the step donates the student's buffers, never the teacher's.
  variables = jax.device_put(jax.tree.map(jnp.copy, variables), sharding.replicated(mesh))
  return teacher_lib.Teacher(model, variables, tuple(config.mean), tuple(config.std),
                             build.model_input_shape(config)[:2])


def _first_step(config, schedule, state, data, mesh, teacher):
  step = steps.compile_train_step(config, mesh, schedule, teacher=teacher)
  _, metrics = step(state, data)
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _frozen_student(**overrides):
  """A student whose backbone runs in eval mode, as the teacher's does: equal weights give
  equal logits on equal pictures (its head still trains)."""
  return _student(**{"freeze_backbone": True, "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
                     "cutout_size": 4, "distill_alpha": 1.0, **overrides})


@pytest.mark.slow
def test_a_teacher_equal_to_the_student_has_nothing_to_teach_under_mixing():
  """The teacher sees the very batch the student does (crop, flip, cutout, mixup, CutMix):
  equal networks then agree, and the distillation loss is 0 up to rounding."""
  config, schedule, state, data, mesh = _frozen_student()
  same = _teacher(config, mesh, {"params": state.params, "batch_stats": state.batch_stats})
  metrics = _first_step(config, schedule, state, data, mesh, same)
  assert metrics["label_loss"] > 0.5  # Something to learn from the labels...
  assert abs(metrics["distill_loss"]) < 1e-5  # ...but nothing from an equal teacher.
  assert abs(metrics["train_loss"]) < 1e-5  # alpha = 1: the distillation term alone.
  config, schedule, state, data, mesh = _frozen_student()
  other = _first_step(config, schedule, state, data, mesh, _teacher(config, mesh, seed=1))
  assert other["distill_loss"] > 1e-3  # Another teacher does disagree.


@pytest.mark.slow
def test_micro_batches_keep_each_picture_with_its_teacher_logits():
  """With BatchNorm frozen, accumulating 4 micro-batches computes what one batch does."""
  results = []
  for accum in (1, 4):
    config, schedule, state, data, mesh = _frozen_student(grad_accum_steps=accum,
                                                          distill_alpha=0.5)
    step = steps.compile_train_step(config, mesh, schedule,
                                    teacher=_teacher(config, mesh, seed=1))
    state, metrics = step(state, data)
    results.append(jax.device_get((state.params, metrics)))
  (params, metrics), (accumulated, accumulated_metrics) = results
  for name in ("train_loss", "label_loss", "distill_loss"):
    np.testing.assert_allclose(accumulated_metrics[name], metrics[name], rtol=1e-5, err_msg=name)
  chex.assert_trees_all_close(accumulated, params, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_teacher_variables_are_an_argument_of_the_program():
  """Another teacher's weights run in the same compiled program (no constants baked in)."""
  config, schedule, state, data, mesh = _student()
  first = steps.compile_train_step(config, mesh, schedule, teacher=_teacher(config, mesh, seed=1))
  second = steps.WithTeacher(first.jitted, _teacher(config, mesh, seed=2).variables)
  copy = jax.tree.map(jnp.copy, state)
  _, metrics_a = first(state, data)
  _, metrics_b = second(copy, data)
  assert first.jitted._cache_size() == 1
  assert float(metrics_a["distill_loss"]) != float(metrics_b["distill_loss"])
  np.testing.assert_allclose(float(metrics_a["label_loss"]), float(metrics_b["label_loss"]),
                             rtol=1e-6)
