"""The in-memory loader: eval padding, the split cache and the offline error."""

import time

import numpy as np
import pytest

from resnet_jax.data import memory, tfds_source
from resnet_jax.errors import UserError


def test_pad_for_eval_masks_padding():
  split = memory.Split(np.ones((10, 2, 2, 1), np.uint8), np.arange(10, dtype=np.int32))
  images, labels, mask = memory.pad_for_eval(split, 4)
  assert images.shape[0] == labels.shape[0] == mask.shape[0] == 12
  assert mask.sum() == 10 and not mask[10:].any()


def test_channel_stats_match_numpy():
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
  mean, std = memory.channel_stats(images)
  np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0) / 255, rtol=1e-9)
  np.testing.assert_allclose(std, images.reshape(-1, 3).std(0) / 255, rtol=1e-6)


def test_cache_round_trip_and_damage(tmp_path):
  split = memory.Split(np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
                               np.array([1, 0], np.int32))
  path = memory._cache_path(str(tmp_path), "cifar10", "train[:10%]")
  memory._write_cache(path, split, {"num_classes": 10})
  loaded, meta = memory._read_cache(path)
  np.testing.assert_array_equal(loaded.images, split.images)
  assert meta["num_classes"] == 10
  with open(path, "r+b") as f:
    f.truncate(20)
  assert memory._read_cache(path) is None  # Damaged: decoded again, not trusted.


def test_offline_without_data_is_a_quick_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "_network_reachable", lambda *a, **k: False)
  start = time.time()
  with pytest.raises(UserError, match="manual_dir"):
    memory.load_split("cifar10", "train", str(tmp_path))
  assert time.time() - start < 30
  assert not (tmp_path / "resnet_jax_cache").exists()


def test_unknown_dataset_and_missing_manual_dir(tmp_path):
  with pytest.raises(UserError, match="unknown dataset 'cifar11'"):
    memory.load_split("cifar11", "train", str(tmp_path))
  with pytest.raises(UserError, match="does not exist"):
    memory.load_split("cifar10", "train", str(tmp_path), str(tmp_path / "nowhere"))
