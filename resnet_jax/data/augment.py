"""On-device augmentation and preprocessing: pure JAX functions run inside the compiled step.

Randomness comes from keys folded with the step (`fold_in(key, step)`), so a
resumed run draws exactly what an uninterrupted one would.
"""

from collections.abc import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import balance


def batch_indices(data_key: jax.Array, step: jax.Array, num_examples: int,
                  batch_size: int) -> jax.Array:
  """Indices of the training batch at `step`: a fresh permutation each epoch."""
  steps_per_epoch = num_examples // batch_size
  epoch, position = jnp.divmod(step, steps_per_epoch)
  permutation = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)
  return jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size)


def balanced_batch_indices(data_key: jax.Array, step: jax.Array, labels_N: jax.Array,
                           class_counts: Sequence[int], batch_size: int) -> jax.Array:
  """Indices of the training batch at `step` with the classes drawn equally (class_balance=sample).

  Epoch e is `balance.balanced_epoch` drawn with the keys of fold_in(data_key,
  e); `class_counts` (static) must be the bincount of `labels_N`.
  """
  num_examples = labels_N.shape[0]
  steps_per_epoch = num_examples // batch_size
  epoch, position = jnp.divmod(step, steps_per_epoch)
  within_key, slot_key = jax.random.split(jax.random.fold_in(data_key, epoch))
  within = jax.random.permutation(within_key, num_examples)
  grouped = within[jnp.argsort(jnp.asarray(labels_N)[within], stable=True)]
  slots = grouped[np.asarray(balance.epoch_slots(class_counts, num_examples), np.int32)]
  order = slots[jax.random.permutation(slot_key, slots.shape[0])]
  return jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)


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
  # Here, not deep inside XLA's broadcast: a mean per channel of a [B, H, W, C] batch.
  chex.assert_rank(images_BHWC, 4)
  chex.assert_axis_dimension(images_BHWC, 3, len(mean))
  chex.assert_equal(len(mean), len(std))
  x = images_BHWC.astype(jnp.float32) / 255.0
  if image_size and image_size != x.shape[1]:
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bilinear")
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def cutout(key: jax.Array, images_BHWC: jax.Array, size: int) -> jax.Array:
  """Zeroes one size x size square per image, placed uniformly and wholly inside it.

  Applied after normalisation, so the square takes the mean colour (as in
  airbench and DeVries & Taylor's Cutout).
  """
  if not size:
    return images_BHWC
  batch, height, width, _ = images_BHWC.shape
  top_key, left_key = jax.random.split(key)
  top = jax.random.randint(top_key, (batch, 1, 1), 0, height - size + 1)
  left = jax.random.randint(left_key, (batch, 1, 1), 0, width - size + 1)
  square_BHW = _box_mask(top, top + size, left, left + size, height, width)
  return jnp.where(square_BHW[..., None], jnp.zeros((), images_BHWC.dtype), images_BHWC)


def _box_mask(top: jax.Array, bottom: jax.Array, left: jax.Array, right: jax.Array,
              height: int, width: int) -> jax.Array:
  """[B, H, W] booleans: rows in [top, bottom) and columns in [left, right), per image."""
  rows = jnp.arange(height)[None, :, None]
  columns = jnp.arange(width)[None, None, :]
  return (rows >= top) & (rows < bottom) & (columns >= left) & (columns < right)


def mix(key: jax.Array, images_BHWC: jax.Array, targets_BK: jax.Array, mixup_alpha: float,
        cutmix_alpha: float) -> tuple[jax.Array, jax.Array]:
  """Mixup or CutMix of each image with a partner from the same batch, targets alike.

  Partners are a random permutation of the batch; each image draws its own
  weight lam ~ Beta(alpha, alpha). Mixup blends the whole image, lam of
  it with 1 - lam of its partner; CutMix pastes a box of the partner
  covering about 1 - lam of the area (clipped at the borders, the weight
  then follows the box's real area). With both on, each image gets one or
  the other with even odds. Each target becomes lam x its own + (1 - lam) x
  the partner's, so it still sums to 1 (a multi-label run's multi-hot targets
  mix alike, class by class).
  """
  if not (mixup_alpha or cutmix_alpha):
    return images_BHWC, targets_BK
  batch, height, width, _ = images_BHWC.shape
  partner_key, mixup_key, cutmix_key, box_key, choice_key = jax.random.split(key, 5)
  partner = jax.random.permutation(partner_key, batch)
  images = images_BHWC.astype(jnp.float32)
  ones = jnp.ones((batch,), jnp.float32)
  lam_mixup = (jax.random.beta(mixup_key, mixup_alpha, mixup_alpha, (batch,)) if mixup_alpha
               else ones)
  mixed = _per_image(lam_mixup) * images + (1 - _per_image(lam_mixup)) * images[partner]
  lam = lam_mixup
  if cutmix_alpha:
    lam_cut = jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha, (batch,))
    box_BHW, lam_cut = _cutmix_box(box_key, lam_cut, height, width)
    pasted = jnp.where(box_BHW[..., None], images[partner], images)
    use_cutmix = (jax.random.bernoulli(choice_key, 0.5, (batch,)) if mixup_alpha
                  else jnp.ones((batch,), bool))
    mixed = jnp.where(_per_image(use_cutmix), pasted, mixed)
    lam = jnp.where(use_cutmix, lam_cut, lam_mixup)
  targets = lam[:, None] * targets_BK + (1 - lam[:, None]) * targets_BK[partner]
  return mixed.astype(images_BHWC.dtype), targets


def _per_image(values_B: jax.Array) -> jax.Array:
  return values_B[:, None, None, None]


def _cutmix_box(key: jax.Array, lam_B: jax.Array, height: int,
                width: int) -> tuple[jax.Array, jax.Array]:
  """A box per image of about 1 - lam of the area, centred at random; and its real area's lam."""
  cut = jnp.sqrt(1.0 - lam_B)
  cut_height = (cut * height).astype(jnp.int32)[:, None, None]
  cut_width = (cut * width).astype(jnp.int32)[:, None, None]
  row_key, column_key = jax.random.split(key)
  centre_row = jax.random.randint(row_key, (lam_B.shape[0], 1, 1), 0, height)
  centre_column = jax.random.randint(column_key, (lam_B.shape[0], 1, 1), 0, width)
  top, bottom = (jnp.clip(centre_row - cut_height // 2, 0, height),
                 jnp.clip(centre_row + cut_height // 2, 0, height))
  left, right = (jnp.clip(centre_column - cut_width // 2, 0, width),
                 jnp.clip(centre_column + cut_width // 2, 0, width))
  box_BHW = _box_mask(top, bottom, left, right, height, width)
  area = jnp.mean(box_BHW, axis=(1, 2), dtype=jnp.float32)
  return box_BHW, 1.0 - area


def tta_views(images_BHWC: jax.Array, mode: str) -> list[tuple[float, jax.Array]]:
  """The views test-time augmentation averages, each with its weight (they sum to 1).

  "flip": the image and its mirror, 1/2 each. "flip_translate" (airbench's
  tta_level=2): those two at 1/4 each, and the mirror pairs of the image
  shifted by one pixel down-right and by one pixel up-left (borders
  reflected), 1/8 each: six views.
  """
  if mode == "none":
    return [(1.0, images_BHWC)]
  if mode not in ("flip", "flip_translate"):
    raise ValueError(f"unknown test-time augmentation {mode!r}")
  mirror = lambda x: x[:, :, ::-1]
  if mode == "flip":
    return [(0.5, images_BHWC), (0.5, mirror(images_BHWC))]
  _, height, width, _ = images_BHWC.shape
  padded = jnp.pad(images_BHWC, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  shifted = [padded[:, :height, :width], padded[:, 2:, 2:]]
  return ([(0.25, images_BHWC), (0.25, mirror(images_BHWC))]
          + [(0.125, view) for s in shifted for view in (s, mirror(s))])


def tta_logits(apply: Callable[[jax.Array], jax.Array], images_BHWC: jax.Array,
               mode: str) -> jax.Array:
  """The weighted mean of apply's float32 logits over the views of `tta_views`, in one batch."""
  views = tta_views(images_BHWC, mode)
  if len(views) == 1:
    return apply(images_BHWC).astype(jnp.float32)
  batch = images_BHWC.shape[0]
  logits = apply(jnp.concatenate([view for _, view in views])).astype(jnp.float32)
  weights = jnp.asarray([weight for weight, _ in views], jnp.float32)
  return jnp.einsum("v,vbk->bk", weights, logits.reshape(len(views), batch, -1))
