"""On-device augmentation: batches by epoch permutation, crop, flip, preprocessing."""

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import augment


def test_each_epoch_is_a_fresh_permutation():
  key = jax.random.key(3)
  n, batch = 50, 8  # 6 steps per epoch; the last 2 examples wait for another epoch.
  epoch = lambda e: np.concatenate(
      [augment.batch_indices(key, jnp.asarray(e * 6 + i), n, batch) for i in range(6)])
  first, second = epoch(0), epoch(1)
  assert len(set(first.tolist())) == 48 and len(set(second.tolist())) == 48
  assert not np.array_equal(first, second)
  np.testing.assert_array_equal(first, epoch(0))  # Same seed and step, same batch.


def test_crop_flip_keeps_pixels_and_varies():
  images = jnp.arange(2 * 8 * 8 * 1, dtype=jnp.int32).reshape(2, 8, 8, 1).astype(jnp.uint8)
  same = augment.random_crop_flip(jax.random.key(0), images, padding=0, flip=False)
  np.testing.assert_array_equal(same, images)
  flipped = [augment.random_crop_flip(jax.random.key(s), images, 0, True) for s in range(8)]
  assert any(np.array_equal(f[0], images[0, :, ::-1]) for f in flipped)
  assert any(np.array_equal(f[0], images[0]) for f in flipped)
  cropped = augment.random_crop_flip(jax.random.key(1), images, padding=2, flip=False)
  assert cropped.shape == images.shape
  # Every non-zero pixel of a crop comes from the original image.
  values = set(np.asarray(images).ravel().tolist())
  assert set(np.asarray(cropped).ravel().tolist()) - {0} <= values


def test_preprocess_normalises_and_resizes():
  images = jnp.full((1, 4, 4, 3), 255, jnp.uint8)
  out = augment.preprocess(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), image_size=8)
  assert out.shape == (1, 8, 8, 3)
  np.testing.assert_allclose(out, 2.0, rtol=1e-6)
