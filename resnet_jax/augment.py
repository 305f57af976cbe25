"""On-device augmentation and preprocessing: pure JAX functions run inside the compiled step.

Randomness comes from keys folded with the step (`fold_in(key, step)`), so a
resumed run draws exactly what an uninterrupted one would.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def batch_indices(data_key: jax.Array, step: jax.Array, num_examples: int,
                  batch_size: int) -> jax.Array:
  """Indices of the training batch at `step`: a fresh permutation each epoch."""
  steps_per_epoch = num_examples // batch_size
  epoch, position = jnp.divmod(step, steps_per_epoch)
  permutation = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
  return jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size)


def random_crop_flip(key: jax.Array, images_BHWC: jax.Array, padding: int,
                     flip: bool) -> jax.Array:
  """Pad-and-crop to the same size and flip left-right at random, per image."""
  batch, height, width, _ = images_BHWC.shape
  crop_key, flip_key = jax.random.split(key)
  if padding:
    padded = jnp.pad(images_BHWC, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))
    images_BHWC = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
    images_BHWC = jnp.where(do_flip, images_BHWC[:, :, ::-1], images_BHWC)
  return images_BHWC


def preprocess(images_BHWC: jax.Array, mean: Sequence[float], std: Sequence[float],
               image_size: int = 0, dtype=jnp.float32) -> jax.Array:
  """uint8 images to normalised floats, resized to image_size when it is set."""
  x = images_BHWC.astype(jnp.float32) / 255.0
  if image_size and image_size != x.shape[1]:
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)
