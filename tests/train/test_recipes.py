"""The record recipes end to end: EMA in checkpoints, exact resume with the new augmentations,
time to accuracy in the summary, validation of the new fields."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import serialization

from resnet_jax.config import configuration
from resnet_jax.models import ema
from resnet_jax.train import steps
from resnet_jax.evaluation import evaluator, prediction
from resnet_jax.reporting import metrics_file, summary
from resnet_jax.checkpoints.checkpointing import Checkpointer
from resnet_jax.errors import UserError
from tests.conftest import assert_resume_is_exact, tiny_config
from resnet_jax.models import build

MOCK_EXAMPLES = 48  # Per split: 3 steps per epoch at batch 16.


@pytest.mark.slow
def test_resumed_run_with_ema_cutout_and_mixing_equals_uninterrupted(tmp_path, monkeypatch):
  config = tiny_config(num_epochs=2.0, data_dir=str(tmp_path / "data"), ema_decay=0.9,
                       cutout_size=4, mixup_alpha=0.4, cutmix_alpha=1.0, eval_tta="flip",
                       target_accuracies=(0.05, 1.0))
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    # Call 4 is mid-epoch 2: between scheduled checkpoints. The saved states hold `ema`,
    # and assert_resume_is_exact compares it with the rest.
    assert_resume_is_exact(config, tmp_path, monkeypatch, stop_at_call=4, num_steps=6)
    result = evaluator.evaluate_workdir(str(tmp_path / "resumed"))  # --mode=eval
  assert (result["eval_weights"], result["eval_tta"]) == ("ema", "flip")
  assert json.loads((tmp_path / "resumed" / "eval.json").read_text())["eval_weights"] == "ema"
  predictor = prediction.load_predictor(str(tmp_path / "resumed"))
  assert (predictor.weights, predictor.tta) == ("ema", "flip")
  records = metrics_file.read_metrics(str(tmp_path / "resumed"))
  compile_lines = [r for r in records if "compile_time_s" in r]
  assert len(compile_lines) == 2  # One per session.
  assert all({"grad_norm", "param_norm", "update_norm", "train_time_s"} <= set(r)
             for r in records if "train_loss" in r)
  reached = [r for r in records if "time_to_0.05_s" in r]
  assert len(reached) == 1 and reached[0]["step"] == 3  # The first eval; not again after it.
  assert not any("time_to_1_s" in r for r in records)
  facts = summary.summarize_run(str(tmp_path / "resumed"))
  assert facts["time_to"] == {0.05: (reached[0]["time_to_0.05_s"], 3)}
  table = summary.format_summary(facts, None, "w")
  rows = {line.split("  ")[1]: line.split("  ")[-1].strip() for line in table.splitlines()
          if line.startswith("  time to")}
  assert rows["time to 100%"] == "- (not reached)" and rows["time to 5%"] == "(step 3)"


def _state(ema_decay: float, value: float) -> build.TrainState:
  """A train state of two small arrays, with an EMA when ema_decay > 0."""
  params, batch_stats = {"w": jnp.full((3,), value)}, {"mean": jnp.full((2,), value)}
  config = tiny_config(ema_decay=ema_decay, weight_decay=0.0)
  tx = steps.create_optimizer(config, lambda _: 0.1, params)
  state = build.TrainState.create(apply_fn=None, params=params, batch_stats=batch_stats, tx=tx)
  state = state.replace(step=jnp.int32(0))  # As the compiled step leaves it.
  if ema_decay:
    state = state.replace(ema={"params": {"w": jnp.full((3,), -value)},
                               "batch_stats": {"mean": jnp.full((2,), -value)}})
  return state


@pytest.mark.parametrize("saved_with_ema, resumed_with_ema", [(False, True), (True, False)])
def test_checkpoints_resume_across_turning_ema_on_and_off(tmp_path, saved_with_ema,
                                                          resumed_with_ema):
  saved = _state(0.9 if saved_with_ema else 0.0, 2.0)
  state_dict = serialization.to_state_dict(saved)
  assert ("ema" in state_dict) == saved_with_ema  # Runs without EMA save what they always did.
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
  checkpointer.save(7, state_dict, {}, force=True)
  checkpointer.wait()
  target = _state(0.9 if resumed_with_ema else 0.0, 0.0)
  restored = checkpointer.restore(7, serialization.to_state_dict(target))
  checkpointer.close()
  state = serialization.from_state_dict(target, restored)
  np.testing.assert_array_equal(state.params["w"], 2.0)
  if resumed_with_ema:  # The average starts from the restored weights.
    np.testing.assert_array_equal(state.ema["params"]["w"], 2.0)
    np.testing.assert_array_equal(state.ema["batch_stats"]["mean"], 2.0)
  else:
    assert state.ema is None


@pytest.mark.parametrize("overrides, message", [
    ({"cutout_size": -1}, "cutout_size must not be negative"),
    ({"mixup_alpha": -0.2}, "mixup_alpha must not be negative"),
    ({"cutmix_alpha": -1.0}, "cutmix_alpha must not be negative"),
    ({"ema_decay": 1.0}, "ema_decay must lie in [0, 1)"),
    ({"eval_tta": "five_crop"}, "unknown eval_tta 'five_crop'"),
    ({"lr_schedule": "step"}, "use 'cosine', 'linear' or 'constant'"),
    ({"grad_accum_steps": 0}, "grad_accum_steps must be at least 1"),
    ({"grad_accum_steps": 3}, "batch_size 16 does not split into 3 micro-batches"),
    ({"target_accuracies": (94.0,)}, "must be fractions in (0, 1]"),
    ({"target_accuracies": ("0.9",)}, "must be fractions in (0, 1]"),
])
def test_recipe_fields_are_validated_in_one_line(overrides, message):
  with pytest.raises(UserError) as error:
    configuration.validate(tiny_config(**overrides))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_cutout_larger_than_the_images_is_refused():
  from tests.conftest import resolved_config
  with pytest.raises(UserError, match="cutout_size 20 exceeds the 16-pixel images"):
    configuration.check_against_data(resolved_config(tiny_config(cutout_size=20), size=16))


def test_eval_predict_and_fine_tuning_take_the_ema_weights_where_saved():
  raw = {"params": {"w": 1.0}, "batch_stats": {"m": 2.0}}
  assert ema.preferred(raw) == (raw, "raw")
  with_ema = {**raw, "ema": {"params": {"w": 3.0}, "batch_stats": {"m": 4.0}}}
  assert ema.preferred(with_ema) == (with_ema["ema"], "ema")
  state, which = ema.for_eval(_state(0.9, 2.0))
  assert which == "ema" and float(state.params["w"][0]) == -2.0
  assert float(state.batch_stats["mean"][0]) == -2.0
