"""The weight EMA against timm's ModelEmaV3: its warm-up schedule and its average of weights and
BatchNorm statistics, and the training eval that reports both the EMA and the raw weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from resnet_jax import sharding
from resnet_jax.evaluation import evaluator
from resnet_jax.models import build, ema
from resnet_jax.data import memory
from resnet_jax.train import steps
from tests.conftest import import_timm, resolved_config, tiny_config

NUM_STEPS = 300


def timm_documented_decay(step: int, decay: float, power: float) -> float:
  """ModelEmaV3.get_decay as timm documents it (gamma 1, min_decay 0, update_after_step 0).

  `step` is timm train.py's num_updates: optimizer steps done, this one included.
  """
  step = max(0, step - 1)
  if step <= 0:
    return 0.0
  return max(min(1 - (1 + step / 1.0) ** -power, decay), 0.0)


@pytest.mark.parametrize("decay, power", [(0.999, 0.75), (0.98, 2 / 3)])
def test_warmup_schedule_is_timms_over_hundreds_of_steps(decay, power):
  ours = np.asarray([float(ema.decay_at(t, decay, power)) for t in range(NUM_STEPS)])
  reference = np.asarray([timm_documented_decay(t + 1, decay, power) for t in range(NUM_STEPS)])
  np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-7)
  assert ours[0] == 0.0  # The first update copies the weights: the initial ones are gone.
  assert float(ema.decay_at(10, decay, None)) == pytest.approx(decay)  # ema_warmup=False.


def _training(config, num_steps):
  """Our state after each of num_steps steps on random data: [{"params", "batch_stats"}]."""
  mesh = sharding.create_mesh()
  config = resolved_config(config, size=16, num_train_examples=64)
  schedule = steps.learning_rate_schedule(config, 4, num_steps)
  state = steps.create_train_state(config, build.create_model(config), schedule, mesh)
  step = steps.compile_train_step(config, mesh, schedule)
  rng = np.random.default_rng(0)
  data = {"image": rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (64,), dtype=np.int32)}
  data = {k: sharding.put_replicated(v, mesh) for k, v in data.items()}
  initial = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  weights = []
  for _ in range(num_steps):
    state, _ = step(state, data)
    weights.append(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
  return initial, weights, jax.device_get(state.ema)


def _flat(tree):
  return {"/".join(path): np.asarray(v, np.float32)
          for path, v in traverse_util.flatten_dict(tree).items()}


def test_average_of_weights_and_batch_stats_is_timms_model_ema_v3():
  """timm's real ModelEmaV3 update run on a torch module holding our weights after every step."""
  import_timm()
  import torch
  from timm.utils import ModelEmaV3
  decay, power, num_steps = 0.97, 0.75, 150  # The cap is reached at step 107: both regimes.
  config = tiny_config(ema_decay=decay, ema_warmup_power=power, lr_schedule="constant",
                       warmup_epochs=0.0, learning_rate=0.1)
  initial, weights, ours = _training(config, num_steps)
  initial = _flat(initial)

  class Holder(torch.nn.Module):
    """Parameters as parameters, BatchNorm statistics as buffers, as in a torch ResNet."""

    def __init__(self):
      super().__init__()
      self.names = sorted(initial)
      for i, name in enumerate(self.names):
        value = torch.from_numpy(initial[name].copy())
        if name.startswith("batch_stats/"):
          self.register_buffer(f"v{i}", value)
        else:
          self.register_parameter(f"v{i}", torch.nn.Parameter(value))

  model = Holder()
  reference = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=power, device="cpu")
  for num_updates, step_weights in enumerate(weights, start=1):
    step_weights = _flat(step_weights)
    with torch.no_grad():
      for i, name in enumerate(model.names):
        getattr(model, f"v{i}").copy_(torch.from_numpy(step_weights[name].copy()))
    reference.update(model, step=num_updates)  # As timm's train.py calls it.
  ours = _flat(ours)
  for i, name in enumerate(model.names):
    expected = getattr(reference.module, f"v{i}").detach().numpy()
    np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
  # The average lags the last weights: not a copy of them.
  last = _flat(weights[-1])
  assert not np.allclose(ours["params/fc/kernel"], last["params/fc/kernel"], atol=1e-4)


def test_first_update_forgets_the_initial_weights():
  """Before the warm-up, 0.999 of the random initialisation stayed in the average."""
  initial, weights, ours = _training(tiny_config(ema_decay=0.999), 1)
  for name, value in _flat(ours).items():
    np.testing.assert_allclose(value, _flat(weights[0])[name], rtol=1e-6, atol=1e-7,
                               err_msg=name)
  assert not np.allclose(_flat(ours)["params/fc/kernel"], _flat(initial)["params/fc/kernel"])


@pytest.mark.slow
def test_training_eval_reports_ema_and_raw_weights():
  config = resolved_config(tiny_config(ema_decay=0.9), size=16)
  mesh = sharding.create_mesh()
  model = build.create_model(config)
  state = steps.create_train_state(config, model, steps.learning_rate_schedule(config, 4, 8), mesh)
  # An average far from the raw weights: a differently seeded initialisation.
  other = model.init(jax.random.key(7), jnp.zeros((1, 16, 16, 3)), train=False)
  state = state.replace(ema={"params": other["params"], "batch_stats": other["batch_stats"]})
  rng = np.random.default_rng(1)
  split = memory.Split(rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8),
                       rng.integers(0, 10, (48,), dtype=np.int32))
  metrics = evaluator.Evaluator(config, mesh, split).run(state)
  raw_only = evaluator.Evaluator(config, mesh, split).run(state.replace(ema=None))
  ema_only = evaluator.Evaluator(config, mesh, split).run(state.replace(
      params=other["params"], batch_stats=other["batch_stats"], ema=None))
  assert metrics["eval_weights"] == "ema"
  assert metrics["eval_accuracy"] == ema_only["eval_accuracy"]
  assert metrics["eval_loss"] == pytest.approx(ema_only["eval_loss"], rel=1e-6)
  assert metrics["eval_accuracy_raw"] == raw_only["eval_accuracy"]
  assert metrics["eval_loss_raw"] == pytest.approx(raw_only["eval_loss"], rel=1e-6)
  assert metrics["eval_loss_raw"] != pytest.approx(metrics["eval_loss"], rel=1e-3)
  assert "eval_accuracy_raw" not in raw_only
  assert "raw weights" in evaluator.describe_weights(metrics)
