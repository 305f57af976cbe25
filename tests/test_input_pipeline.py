"""The on-device pipeline, the split cache and the offline error."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import input_pipeline
from resnet_jax.errors import UserError


def test_each_epoch_is_a_fresh_permutation():
  key = jax.random.key(3)
  n, batch = 50, 8  # 6 steps per epoch; the last 2 examples wait for another epoch.
  epoch = lambda e: np.concatenate(
      [input_pipeline.batch_indices(key, jnp.asarray(e * 6 + i), n, batch) for i in range(6)])
  first, second = epoch(0), epoch(1)
  assert len(set(first.tolist())) == 48 and len(set(second.tolist())) == 48
  assert not np.array_equal(first, second)
  np.testing.assert_array_equal(first, epoch(0))  # Same seed and step, same batch.


def test_crop_flip_keeps_pixels_and_varies():
  images = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.int32).reshape(2, 8, 8, 1).astype(jnp.uint8)
  same = input_pipeline.random_crop_flip(jax.random.key(0), images, padding=0, flip=False)
  np.testing.assert_array_equal(same, images)
  flipped = [input_pipeline.random_crop_flip(jax.random.key(s), images, 0, True) for s in range(8)]
  assert any(np.array_equal(f[0], images[0, :, ::-1]) for f in flipped)
  assert any(np.array_equal(f[0], images[0]) for f in flipped)
  cropped = input_pipeline.random_crop_flip(jax.random.key(1), images, padding=2, flip=False)
  assert cropped.shape == images.shape
  # Every non-zero pixel of a crop comes from the original image.
  values = set(np.asarray(images).ravel().tolist())
  assert set(np.asarray(cropped).ravel().tolist()) - {0} <= values


def test_preprocess_normalises_and_resizes():
  images = jnp.full((1, 4, 4, 3), 255, jnp.uint8)
  out = input_pipeline.preprocess(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), image_size=8)
  assert out.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(out, 2.0, rtol=1e-6)


def test_pad_for_eval_masks_padding():
  split = input_pipeline.Split(np.ones((10, 2, 2, 1), np.uint8), np.arange(10, dtype=np.int32))
  images, labels, mask = input_pipeline.pad_for_eval(split, 4)
  assert images.shape[0] == labels.shape[0] == mask.shape[0] == 12
  assert mask.sum() == 10 and not mask[10:].any()


def test_channel_stats_match_numpy():
  images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
  mean, std = input_pipeline.channel_stats(images)
  np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0) / 255, rtol=1e-9)
  np.testing.assert_allclose(std, images.reshape(-1, 3).std(0) / 255, rtol=1e-6)


def test_cache_round_trip_and_damage(tmp_path):
  split = input_pipeline.Split(np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
                               np.array([1, 0], np.int32))
  path = input_pipeline._cache_path(str(tmp_path), "cifar10", "train[:10%]")
  input_pipeline._write_cache(path, split, {"num_classes": 10})
  loaded, meta = input_pipeline._read_cache(path)
  np.testing.assert_array_equal(loaded.images, split.images)
  assert meta["num_classes"] == 10
  with open(path, "r+b") as f:
    f.truncate(20)
  assert input_pipeline._read_cache(path) is None  # Damaged: decoded again, not trusted.


def test_offline_without_data_is_a_quick_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "_network_reachable", lambda *a, **k: False)
  start = time.time()
  with pytest.raises(UserError, match="manual_dir"):
    input_pipeline.load_split("cifar10", "train", str(tmp_path))
  assert time.time() - start < 30
  assert not (tmp_path / "resnet_jax_cache").exists()


def test_unknown_dataset_and_missing_manual_dir(tmp_path):
  with pytest.raises(UserError, match="unknown dataset 'cifar11'"):
    input_pipeline.load_split("cifar11", "train", str(tmp_path))
  with pytest.raises(UserError, match="does not exist"):
    input_pipeline.load_split("cifar10", "train", str(tmp_path), str(tmp_path / "nowhere"))
