"""Starting from a checkpoint: strict loading, head re-initialisation, errors."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import traverse_util

from resnet_jax.interop import pretrained
from resnet_jax.checkpoints import restore
from resnet_jax.train import trainer
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
  variables, _, _ = restore.load_variables(str(workdir / "run"))
  return str(workdir / "run"), traverse_util.flatten_dict(jax.device_get(variables))


def started_from(source, tmp_path, **overrides):
  config = tiny_config(init_checkpoint=source, data_dir=str(tmp_path / "data"), **overrides)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    run = trainer.Trainer(config, str(tmp_path / "finetune"), quiet=True)
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


# RGB weights for grayscale images and the reverse: the stem's kernel is fitted.


def _tiny_variables(channels: int, seed: int) -> dict:
  """resnet_tiny (width 4, 10 classes) for `channels`-channel images, with random values."""
  from resnet_jax.models import resnet
  model = resnet.create_model("resnet_tiny", 10, "cifar", 4)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, channels)),
                                             train=False))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)


def _stem_and_logits(variables: dict, images_BHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  from resnet_jax.models import resnet
  model = resnet.create_model("resnet_tiny", 10, "cifar", 4)
  logits, state = model.apply(variables, images_BHWC, train=False, capture_intermediates=True,
                              mutable=["intermediates"])
  return np.asarray(state["intermediates"]["conv1"]["__call__"][0]), np.asarray(logits)


@pytest.mark.parametrize("source_channels, model_channels", [(3, 1), (1, 3)])
def test_merge_fits_the_stem_between_gray_and_rgb(source_channels, model_channels, caplog):
  source = _tiny_variables(source_channels, seed=0)
  fresh = _tiny_variables(model_channels, seed=1)
  with caplog.at_level("INFO", logger="absl"):
    params, head_reset = pretrained.merge(fresh["params"], source["params"], "ckpt")
  assert not head_reset
  assert params["conv1"]["kernel"].shape == fresh["params"]["conv1"]["kernel"].shape
  assert len([r for r in caplog.records if "conv1/kernel" in r.getMessage()]) == 1
  fitted = {"params": params, "batch_stats": source["batch_stats"]}

  gray_BHWC = np.random.default_rng(2).uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
  rgb_BHWC = np.random.default_rng(3).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  if source_channels == 3:  # A gray image gives what the RGB model gives it replicated.
    expected = _stem_and_logits(source, np.repeat(gray_BHWC, 3, axis=-1))
    actual = _stem_and_logits(fitted, gray_BHWC)
  else:  # An RGB image gives what the gray model gives its channel mean.
    expected = _stem_and_logits(source, rgb_BHWC.mean(axis=-1, keepdims=True))
    actual = _stem_and_logits(fitted, rgb_BHWC)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


def test_merge_onto_shapes_fits_the_stem_without_saying_so(caplog):
  source, fresh = _tiny_variables(3, seed=0), _tiny_variables(1, seed=1)
  shapes = jax.eval_shape(lambda: fresh["params"])
  with caplog.at_level("INFO", logger="absl"):
    pretrained.merge(shapes, source["params"], "ckpt")
  assert not [r for r in caplog.records if "conv1/kernel" in r.getMessage()]


def test_other_stem_mismatches_stay_errors_naming_the_layer():
  fresh = {"conv1": {"kernel": np.zeros((3, 3, 1, 4))}}
  for loaded_shape in [(3, 3, 4, 4), (3, 3, 3, 8), (7, 7, 3, 4)]:
    with pytest.raises(UserError, match=r"layer conv1/kernel has shape"):
      pretrained.merge(fresh, {"conv1": {"kernel": np.ones(loaded_shape)}}, "ckpt")
  fresh = {"layer1_0": {"conv1": {"kernel": np.zeros((3, 3, 1, 4))}}}
  with pytest.raises(UserError, match=r"layer layer1_0/conv1/kernel has shape"):
    pretrained.merge(fresh, {"layer1_0": {"conv1": {"kernel": np.ones((3, 3, 3, 4))}}}, "ckpt")


def test_grayscale_run_starts_from_rgb_weights(source_run, tmp_path):
  source, expected = source_run
  loaded, _ = started_from(source, tmp_path, dataset="fashion_mnist")
  kernel = expected[("params", "conv1", "kernel")]
  np.testing.assert_allclose(loaded[("params", "conv1", "kernel")],
                             kernel.sum(axis=2, keepdims=True), rtol=1e-6)
  for path, value in expected.items():
    if path != ("params", "conv1", "kernel"):
      np.testing.assert_array_equal(loaded[path], value, err_msg=str(path))
