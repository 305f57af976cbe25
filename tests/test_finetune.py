"""Starting from a checkpoint: strict loading, head re-initialisation, errors."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import traverse_util

from resnet_jax import checkpointing, pretrained, trainer
from resnet_jax.errors import UserError
from tests.conftest import tiny_config

MOCK_EXAMPLES = 32


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A trained tiny run to start from."""
  workdir = tmp_path_factory.mktemp("source")
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    trainer.train_and_evaluate(tiny_config(num_train_steps=2, data_dir=str(workdir / "data")),
                               str(workdir / "run"), quiet=True)
  variables, _, _ = checkpointing.load_variables(str(workdir / "run"))
  return str(workdir / "run"), traverse_util.flatten_dict(jax.device_get(variables))


def started_from(source, tmp_path, **overrides):
  config = tiny_config(init_checkpoint=source, data_dir=str(tmp_path / "data"), **overrides)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    run = trainer.Run(config, str(tmp_path / "finetune"), quiet=True)
  try:
    return traverse_util.flatten_dict(jax.device_get(
        {"params": run.state.params, "batch_stats": run.state.batch_stats})), int(run.state.step)
  finally:
    run.close()


def test_same_classes_loads_everything(source_run, tmp_path):
  source, expected = source_run
  loaded, step = started_from(source, tmp_path)
  assert step == 0  # A fresh optimizer and step.
  assert loaded.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(loaded[path], value, err_msg=str(path))


def test_other_classes_reinitialises_only_the_head(source_run, tmp_path):
  source, expected = source_run
  loaded, _ = started_from(source, tmp_path, num_classes=5)
  assert loaded[("params", "fc", "kernel")].shape[-1] == 5
  for path, value in expected.items():
    if path[:2] != ("params", "fc"):
      np.testing.assert_array_equal(loaded[path], value, err_msg=str(path))


def test_other_architecture_is_an_error_naming_the_layer(source_run, tmp_path):
  source, _ = source_run
  with pytest.raises(UserError, match=r"layer \w+/\w+.*has shape"):
    started_from(source, tmp_path, width=8)
  with pytest.raises(UserError, match="missing layer1_1/bn1"):
    started_from(source, tmp_path, model="resnet18")


def test_merge_rejects_extra_arrays():
  fresh = {"conv1": {"kernel": np.zeros((3, 3, 3, 4))}}
  loaded = {"conv1": {"kernel": np.ones((3, 3, 3, 4))}, "extra": {"kernel": np.ones(2)}}
  with pytest.raises(UserError, match="unexpected extra/kernel"):
    pretrained.merge(fresh, loaded, "ckpt")
  merged, head_reset = pretrained.merge(fresh, {"conv1": loaded["conv1"]}, "ckpt")
  assert not head_reset and merged["conv1"]["kernel"].sum() == 3 * 3 * 3 * 4
