"""The compiled train and eval steps, the schedule and the optimiser."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from resnet_jax.data import augment
from resnet_jax.evaluation import evaluator
from resnet_jax.train import steps
from tests.conftest import resolved_config, tiny_config
from resnet_jax.models import build
from resnet_jax.evaluation import eval_steps
from resnet_jax import sharding

NUM_EXAMPLES = 64


def synthetic_data(n=NUM_EXAMPLES, seed=0, size=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (n,), dtype=np.int32)}


def setup(config, size=16, n=NUM_EXAMPLES):
  mesh = sharding.create_mesh()
  steps_per_epoch = n // config.batch_size
  schedule = steps.learning_rate_schedule(config, steps_per_epoch, 4 * steps_per_epoch)
  config = resolved_config(config, size=size, num_train_examples=n)
  model = build.create_model(config)
  state = steps.create_train_state(config, model, schedule, mesh)
  step = steps.compile_train_step(config, mesh, schedule)
  data = {k: sharding.put_replicated(v, mesh) for k, v in synthetic_data(n, size=size).items()}
  return state, step, data, mesh


def copy(tree):
  return jax.tree.map(np.array, jax.device_get(tree))


def test_one_step_changes_params_and_batch_stats():
  state, step, data, _ = setup(tiny_config())
  before = copy({"params": state.params, "batch_stats": state.batch_stats})
  state, metrics = step(state, data)
  after = copy({"params": state.params, "batch_stats": state.batch_stats})
  assert np.isfinite(float(metrics["train_loss"]))
  for name in ("params", "batch_stats"):
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                           before[name], after[name]))
    assert all(changed), f"some {name} did not change"
  assert int(state.step) == 1


# Update when the model, the initialisation, the pipeline or the data generator
# changes on purpose: rerun this test and copy the value it reports.
GOLDEN_FIRST_STEP_LOSS = 2.773571491241455


def test_golden_first_step_loss():
  state, step, data, _ = setup(tiny_config(seed=42))
  _, metrics = step(state, data)
  loss = float(metrics["train_loss"])
  assert loss == pytest.approx(GOLDEN_FIRST_STEP_LOSS, rel=1e-4), (
      f"first-step loss is {loss!r}; if the change to the model, init, pipeline or "
      "data was intended, set GOLDEN_FIRST_STEP_LOSS to it")


def test_eval_counts_every_example_once():
  config = tiny_config()
  n, batch = 37, 16  # 3 batches, the last holding 5 real examples.
  state, _, _, mesh = setup(config)
  raw = synthetic_data(n, seed=1)
  from resnet_jax.data import memory
  images, labels, mask = memory.pad_for_eval(memory.Split(raw["image"], raw["label"]), batch)
  data = {k: sharding.put_replicated(v, mesh) for k, v in (("image", images), ("label", labels), ("mask", mask))}
  evaluate = eval_steps.compile_evaluate(resolved_config(config, eval_batch_size=batch), mesh)
  result = evaluator.summarize(jax.device_get(evaluate(state, data)))
  x = augment.preprocess(raw["image"], (0.5,) * 3, (0.25,) * 3)
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
  expected_correct = int(np.sum(np.argmax(logits, -1) == raw["label"]))
  assert result["eval_count"] == n
  assert np.sum(result["confusion_matrix"]) == n
  assert result["eval_accuracy"] == pytest.approx(expected_correct / n)
  expected_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, raw["label"]).mean())
  assert result["eval_loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_schedule_warms_up_then_decays_to_zero():
  config = tiny_config(learning_rate=0.4, warmup_epochs=1.0)
  schedule = steps.learning_rate_schedule(config, 10, 100)
  assert float(schedule(0)) == pytest.approx(0.04)  # lr / warmup_steps: step 0 trains.
  assert float(schedule(5)) == pytest.approx(0.22)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(55)) == pytest.approx(0.2, rel=1e-4)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
  constant = steps.learning_rate_schedule(tiny_config(lr_schedule="constant", warmup_epochs=0.0), 10, 100)
  assert float(constant(0)) == float(constant(99)) == pytest.approx(0.05)


@pytest.mark.parametrize("decay_bn_and_bias", [True, False])
def test_weight_decay_mask(decay_bn_and_bias):
  config = tiny_config(weight_decay=0.1, decay_bn_and_bias=decay_bn_and_bias)
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 1))}, "bn": {"scale": jnp.ones((4,))}}
  tx = steps.create_optimizer(config, optax.constant_schedule(1.0), params)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.1)
  np.testing.assert_allclose(updates["bn"]["scale"], -0.1 if decay_bn_and_bias else 0.0)


def test_frozen_backbone_stays_bit_identical():
  state, step, data, _ = setup(tiny_config(freeze_backbone=True))
  before = copy({"params": state.params, "batch_stats": state.batch_stats})
  for _ in range(3):
    state, _ = step(state, data)
  after = copy({"params": state.params, "batch_stats": state.batch_stats})
  flat_before = traverse_util.flatten_dict(before)
  flat_after = traverse_util.flatten_dict(after)
  for path, value in flat_before.items():
    if path[:2] == ("params", "fc"):
      assert not np.array_equal(value, flat_after[path]), f"head {path} did not train"
    else:
      np.testing.assert_array_equal(value, flat_after[path], err_msg=str(path))


def test_backbone_lr_scale_scales_backbone_updates():
  config = tiny_config(backbone_lr_scale=0.5, weight_decay=0.0)
  params = {"fc": {"kernel": jnp.ones((2, 2))}, "conv1": {"kernel": jnp.ones((2, 2))}}
  tx = steps.create_optimizer(config, optax.constant_schedule(1.0), params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["fc"]["kernel"], -1.0)
  np.testing.assert_allclose(updates["conv1"]["kernel"], -0.5)


def test_linear_schedule_warms_up_then_decays_linearly_to_zero():
  config = tiny_config(learning_rate=0.4, warmup_epochs=2.0, lr_schedule="linear")
  schedule = steps.learning_rate_schedule(config, 10, 100)  # 20 warmup steps, 80 of decay.
  assert float(schedule(0)) == pytest.approx(0.02)  # lr / warmup_steps: step 0 trains.
  assert float(schedule(10)) == pytest.approx(0.21)
  assert float(schedule(20)) == pytest.approx(0.4)
  assert float(schedule(60)) == pytest.approx(0.2)  # Halfway down: linear, not cosine.
  assert float(schedule(80)) == pytest.approx(0.1)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
  no_warmup = steps.learning_rate_schedule(tiny_config(learning_rate=0.4, warmup_epochs=0.0,
                                                       lr_schedule="linear"), 10, 100)
  assert float(no_warmup(0)) == pytest.approx(0.4) and float(no_warmup(75)) == pytest.approx(0.1)


def test_ema_is_the_hand_computed_average_after_three_steps():
  decay = 0.75  # Not 0.5, where decay and 1 - decay would be confused unnoticed.
  # Plain SGD, so that the update is -learning_rate x gradient and its norm checks grad_norm.
  # Without warm-up: the flat decay of ema_warmup=False.
  state, step, data, _ = setup(tiny_config(ema_decay=decay, ema_warmup=False, momentum=0.0,
                                           weight_decay=0.0))
  weights = [copy({"params": state.params, "batch_stats": state.batch_stats})]
  chex.assert_trees_all_equal(copy(state.ema), weights[0])
  for _ in range(3):
    before = copy(state.params)
    state, metrics = step(state, data)
    weights.append(copy({"params": state.params, "batch_stats": state.batch_stats}))
    update = jax.tree.map(np.subtract, weights[-1]["params"], before)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    assert float(metrics["update_norm"]) == pytest.approx(np.linalg.norm(flat(update)), rel=1e-4)
    assert float(metrics["param_norm"]) == pytest.approx(
        np.linalg.norm(flat(weights[-1]["params"])), rel=1e-5)
    assert float(metrics["update_norm"]) == pytest.approx(
        float(metrics["learning_rate"]) * float(metrics["grad_norm"]), rel=1e-4)
  w0, w1, w2, w3 = weights
  expected = jax.tree.map(
      lambda a, b, c, d: decay**3 * a + (1 - decay) * (decay**2 * b + decay * c + d),
      w0, w1, w2, w3)
  chex.assert_trees_all_close(copy(state.ema), expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(copy(state.ema)["params"]["fc"]["kernel"], w3["params"]["fc"]["kernel"])


def test_flip_tta_is_the_mean_of_both_logits():
  state, _, _, _ = setup(tiny_config())
  raw = synthetic_data(16, seed=3)
  x = augment.preprocess(raw["image"], (0.5,) * 3, (0.25,) * 3)
  batch = {"image": x, "label": jnp.asarray(raw["label"]), "mask": jnp.ones((16,))}
  apply = lambda images: state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                        images, train=False)
  mean_logits = (apply(x) + apply(x[:, :, ::-1])) / 2
  flip, plain = eval_steps.eval_step(state, batch, 10, "flip"), eval_steps.eval_step(state, batch, 10)
  expected = optax.softmax_cross_entropy_with_integer_labels(mean_logits, raw["label"]).sum()
  assert float(flip["loss_sum"]) == pytest.approx(float(expected), rel=1e-5)
  assert int(flip["correct"]) == int(np.sum(np.argmax(mean_logits, -1) == raw["label"]))
  assert float(flip["loss_sum"]) != pytest.approx(float(plain["loss_sum"]), rel=1e-4)


def test_grad_accumulation_equals_one_big_batch_step():
  """Exact up to float summation order (rtol 1e-5): the 4 micro-batch gradients are summed
  and divided once. BatchNorm is in inference mode (frozen backbone, head trained), so each
  micro-batch sees the same normalisation as the big batch; with BN training, it would not
  (each micro-batch normalises by its own statistics)."""
  config = tiny_config(freeze_backbone=True)
  initial, big_step, data, mesh = setup(config)
  schedule = steps.learning_rate_schedule(config, NUM_EXAMPLES // 16, 4 * NUM_EXAMPLES // 16)
  accumulating_step = steps.compile_train_step(
      resolved_config(tiny_config(freeze_backbone=True, grad_accum_steps=4)), mesh, schedule)
  results = []
  for step in (big_step, accumulating_step):
    state = jax.tree.map(jnp.copy, initial)  # The same start for both; each step donates it.
    for _ in range(2):
      state, metrics = step(state, data)
    results.append((copy(state.params), float(metrics["train_loss"])))
  (big, big_loss), (accumulated, accumulated_loss) = results
  chex.assert_trees_all_close(accumulated, big, rtol=1e-5, atol=1e-7)
  assert accumulated_loss == pytest.approx(big_loss, rel=1e-5)


def _direct_batch(config, n=16, seed=5, size=16):
  """A preprocessed batch for steps.train_step: normalised images and one-hot targets."""
  raw = synthetic_data(n, seed=seed, size=size)
  images = augment.preprocess(raw["image"], (0.5,) * 3, (0.25,) * 3)
  return {"image": images, "target": build.smoothed_targets(jnp.asarray(raw["label"]), 10, 0.0)}


@pytest.mark.slow
@pytest.mark.parametrize("dropout_rate", [0.0, 0.5])
def test_frozen_backbone_keeps_head_dropout_and_frozen_batch_stats(dropout_rate):
  """Head-only fine-tuning: BN on its running statistics (eval mode), dropout on."""
  config = tiny_config(freeze_backbone=True, dropout_rate=dropout_rate)
  state, _, _, _ = setup(config)
  batch = _direct_batch(config)
  schedule = steps.learning_rate_schedule(config, 4, 16)
  before = copy({"params": state.params, "batch_stats": state.batch_stats})
  logits_eval = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                               batch["image"], train=False)
  loss_eval = float(optax.softmax_cross_entropy(logits_eval, batch["target"]).mean())
  losses = []
  for key in (0, 1):
    new_state, metrics = steps.train_step(state, batch, schedule=schedule,
                                          dropout_key=jax.random.key(key), grad_accum_steps=1,
                                          ema_decay=0.0)
    losses.append(float(metrics["train_loss"]))
    after = copy({"params": new_state.params, "batch_stats": new_state.batch_stats})
    chex.assert_trees_all_equal(before["batch_stats"], after["batch_stats"])
    backbone = {k: v for k, v in after["params"].items() if k != "fc"}
    chex.assert_trees_all_equal({k: v for k, v in before["params"].items() if k != "fc"},
                                backbone)
  if dropout_rate == 0.0:
    assert losses[0] == pytest.approx(loss_eval, rel=1e-6) == losses[1]
  else:  # Half the features dropped, at random: another loss, and another for another key.
    assert abs(losses[0] - loss_eval) > 1e-3 and abs(losses[0] - losses[1]) > 1e-4


@pytest.mark.slow
def test_grad_accumulation_with_batchnorm_training_equals_micro_batches_one_by_one():
  """BatchNorm in training mode: each micro-batch normalised by its own statistics, the running
  statistics threaded from one micro-batch to the next, the mean gradient applied once. The
  reference runs the micro-batches in a Python loop."""
  num_micro = 4
  config = tiny_config(grad_accum_steps=num_micro)
  state, _, _, _ = setup(config)
  batch = _direct_batch(config, n=16)
  micro = {k: v.reshape(num_micro, 16 // num_micro, *v.shape[1:]) for k, v in batch.items()}
  schedule = steps.learning_rate_schedule(config, 4, 16)
  dropout_key = jax.random.key(0)
  ours, metrics = steps.train_step(jax.tree.map(jnp.copy, state), micro, schedule=schedule,
                                   dropout_key=dropout_key, grad_accum_steps=num_micro,
                                   ema_decay=0.0)

  def loss_fn(params, batch_stats, images, targets):
    logits, updates = state.apply_fn({"params": params, "batch_stats": batch_stats}, images,
                                     train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy(logits, targets).mean(), updates["batch_stats"]

  batch_stats, grads, losses = state.batch_stats, [], []
  for j in range(num_micro):
    (loss, batch_stats), grad = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch_stats, micro["image"][j], micro["target"][j])
    grads.append(grad)
    losses.append(float(loss))
  mean_grad = jax.tree.map(lambda *g: sum(g) / num_micro, *grads)
  reference = state.apply_gradients(grads=mean_grad, batch_stats=batch_stats)
  for name in ("params", "batch_stats"):
    chex.assert_trees_all_close(copy(getattr(ours, name)), copy(getattr(reference, name)),
                                rtol=1e-5, atol=1e-6)
  assert float(metrics["train_loss"]) == pytest.approx(np.mean(losses), rel=1e-6)
  # Threaded, not restarted: the last micro-batch alone would give other running statistics.
  _, alone = loss_fn(state.params, state.batch_stats, micro["image"][-1], micro["target"][-1])
  assert not np.allclose(copy(alone)["bn1"]["mean"], copy(ours.batch_stats)["bn1"]["mean"])


def test_a_batch_whose_targets_do_not_match_its_images_fails_naming_them():
  config = tiny_config()
  state, _, _, _ = setup(config)
  batch = _direct_batch(config)
  schedule = steps.learning_rate_schedule(config, 4, 16)
  step = lambda b: steps.train_step(state, b, schedule=schedule, dropout_key=jax.random.key(0),
                                    grad_accum_steps=1, ema_decay=0.0)
  with pytest.raises(AssertionError, match="shape"):
    jax.eval_shape(step, dict(batch, target=batch["target"][:-1]))
  with pytest.raises(AssertionError, match="rank"):
    jax.eval_shape(step, dict(batch, image=batch["image"][0]))
  jax.eval_shape(step, batch)  # The batch as it is traces.
