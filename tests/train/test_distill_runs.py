"""Distillation runs end to end on mock CIFAR-10: the teacher stays out of the student's
checkpoints, an equal teacher has nothing to teach under mixing, resume is exact."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import traverse_util

from resnet_jax.config import configuration
from resnet_jax.models import build
from resnet_jax.reporting import metrics_file
from resnet_jax.train import steps, trainer
from tests.conftest import assert_resume_is_exact, final_state, tiny_config

MOCK_EXAMPLES = 48  # Per split: 3 steps per epoch at batch 16.


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A resnet_tiny of width 8 trained for 3 steps: a teacher wider than the width-4 students."""
  base = tmp_path_factory.mktemp("teacher")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    trainer.train_and_evaluate(tiny_config(width=8, num_train_steps=3,
                                           data_dir=str(base / "data")),
                               str(base / "run"), quiet=True)
  return str(base / "run")


def _shapes(tree) -> dict:
  return {path: np.shape(value) for path, value in traverse_util.flatten_dict(tree).items()}


@pytest.mark.slow
def test_distilled_run_saves_only_the_student_and_resumes_exactly(teacher_run, tmp_path,
                                                                  monkeypatch):
  config = tiny_config(num_epochs=2.0, data_dir=str(tmp_path / "data"), teacher=teacher_run,
                       mixup_alpha=0.4, cutmix_alpha=1.0, cutout_size=4)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    # Call 4 is mid-epoch 2, between scheduled checkpoints.
    assert_resume_is_exact(config, tmp_path, monkeypatch, stop_at_call=4, num_steps=6)
  _, saved = final_state(tmp_path / "straight")
  resolved = configuration.from_json(configuration.read_saved(str(tmp_path / "straight")))
  model = build.create_model(resolved)
  student = jax.eval_shape(steps.init_variables_fn(resolved, model))
  # The checkpoint holds the width-4 student's arrays and its optimizer's, nothing of the teacher.
  assert set(saved) == {"step", "params", "batch_stats", "opt_state"}
  assert _shapes(saved["params"]) == _shapes(student["params"])
  assert _shapes(saved["batch_stats"]) == _shapes(student["batch_stats"])
  # SGD's momentum: one array per student parameter.
  size = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree) if np.ndim(x))
  assert size(saved["opt_state"]) == size(student["params"])
  records = [r for r in metrics_file.read_metrics(str(tmp_path / "straight")) if "train_loss" in r]
  assert records and all({"label_loss", "distill_loss"} <= set(r) for r in records)


@pytest.mark.slow
def test_equal_teacher_gives_zero_loss_at_the_first_step_under_mixing(teacher_run, tmp_path):
  """The student starts as the teacher with its backbone in eval mode (freeze_backbone), as the
  teacher runs: if both see the same cropped, flipped, cut-out and mixed pictures, the
  distillation loss of the first step is 0 up to rounding."""
  config = tiny_config(width=8, num_train_steps=1, log_every_steps=1,
                       data_dir=str(tmp_path / "data"), teacher=teacher_run,
                       init_checkpoint=teacher_run, freeze_backbone=True, distill_alpha=1.0,
                       mixup_alpha=0.4, cutmix_alpha=1.0, cutout_size=4)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    trainer.train_and_evaluate(config, str(tmp_path / "run"), quiet=True)
  first = next(r for r in metrics_file.read_metrics(str(tmp_path / "run")) if "train_loss" in r)
  assert first["step"] == 1
  assert first["label_loss"] > 0.1
  assert abs(first["distill_loss"]) < 1e-5 and abs(first["train_loss"]) < 1e-5
