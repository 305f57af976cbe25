"""On-device augmentation: batches by epoch permutation, crop, flip, cutout, mixing, TTA views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data import augment


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


def test_cutout_zeroes_one_square_of_the_size_inside_the_image():
  images = jnp.ones((16, 12, 10, 3), jnp.float32)
  out = np.asarray(augment.cutout(jax.random.key(4), images, size=5))
  zeroed = np.all(out == 0, axis=-1)  # [B, H, W]; all channels of a pixel go together.
  assert np.all((out == 0) == zeroed[..., None])
  corners = set()
  for mask in zeroed:
    rows, columns = np.nonzero(mask)
    assert len(rows) == 25  # Never clipped at a border: wholly inside.
    assert rows.max() - rows.min() == 4 and columns.max() - columns.min() == 4
    corners.add((rows.min(), columns.min()))
  assert len(corners) > 4  # Placed at random, per image.
  np.testing.assert_array_equal(augment.cutout(jax.random.key(4), images, 0), images)


def _indexed_batch(n=8, num_classes=10):
  """Image i is filled with the value i and labelled i: mixing shows in the pixels."""
  images = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None], (n, 8, 8, 3))
  return images, jax.nn.one_hot(jnp.arange(n), num_classes)


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_sum_to_one_and_follow_the_pixels(mixup_alpha, cutmix_alpha):
  images, targets = _indexed_batch()
  mixed, soft = augment.mix(jax.random.key(7), images, targets, mixup_alpha, cutmix_alpha)
  mixed, soft = np.asarray(mixed), np.asarray(soft)
  np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
  assert np.all(np.count_nonzero(soft, axis=-1) <= 2)  # Each image and one partner.
  # Every target's expected label index equals the image's mean pixel: the same pairs,
  # in the same proportions, were mixed in the image and in its target.
  np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), soft @ np.arange(10), rtol=1e-5)
  assert not np.allclose(soft, np.asarray(targets))  # Something was mixed.
  if not mixup_alpha:  # CutMix pastes whole pixels of the partner: only the two values occur.
    for image, target in zip(mixed, soft):
      assert set(np.unique(image)) <= set(np.nonzero(target)[0].astype(np.float32))


def test_mixing_is_off_at_alpha_zero():
  images, targets = _indexed_batch()
  mixed, soft = augment.mix(jax.random.key(7), images, targets, 0.0, 0.0)
  assert mixed is images and soft is targets


def test_flip_translate_views_are_the_six_of_airbench():
  images = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1)
  views = augment.tta_views(images, "flip_translate")
  assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
  x = np.asarray(images)
  np.testing.assert_array_equal(views[1][1], x[:, :, ::-1])
  np.testing.assert_array_equal(views[2][1][:, 1:, 1:], x[:, :-1, :-1])  # Shifted down-right.
  np.testing.assert_array_equal(views[4][1][:, :-1, :-1], x[:, 1:, 1:])  # Shifted up-left.
  np.testing.assert_array_equal(views[5][1], np.asarray(views[4][1])[:, :, ::-1])


def test_tta_matches_airbench_infer_for_every_level():
  """airbench's `infer` (tta_level 1: infer_mirror; 2: infer_mirror_translate), written here in
  PyTorch from its code: mirror = flip(-1) of NCHW; translate = F.pad(x, (1,)*4, 'reflect')
  cropped at [0:H, 0:W] and [2:H+2, 2:W+2]; 0.5 x mirror(x) + 0.5 x mean of mirror(each shift)."""
  torch = pytest.importorskip("torch", reason="needs PyTorch (the 'torch' extra)")
  import torch.nn.functional as F
  rng = np.random.default_rng(0)
  images_BHWC = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)  # H != W: no swapped axes.
  weights = rng.normal(size=(6 * 5 * 2, 4)).astype(np.float32)

  def net_torch(x_NCHW):  # Non-linear, so that each view's weight shows.
    flat = x_NCHW.permute(0, 2, 3, 1).reshape(x_NCHW.shape[0], -1)
    return torch.tanh(flat @ torch.from_numpy(weights))

  def net_jax(x_BHWC):
    return jnp.tanh(x_BHWC.reshape(x_BHWC.shape[0], -1) @ weights)

  def infer_mirror(inputs, net):
    return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

  def infer_mirror_translate(inputs, net):
    logits = infer_mirror(inputs, net)
    padded = F.pad(inputs, (1,) * 4, "reflect")
    height, width = inputs.shape[2:]
    translated = [padded[:, :, 0:height, 0:width], padded[:, :, 2:height + 2, 2:width + 2]]
    logits_translate = torch.stack([infer_mirror(t, net) for t in translated]).mean(0)
    return 0.5 * logits + 0.5 * logits_translate, translated

  x = torch.from_numpy(images_BHWC.transpose(0, 3, 1, 2))
  expected_flip = infer_mirror(x, net_torch).numpy()
  expected_six, translated = infer_mirror_translate(x, net_torch)
  images = jnp.asarray(images_BHWC)
  np.testing.assert_allclose(augment.tta_logits(net_jax, images, "flip"), expected_flip,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(augment.tta_logits(net_jax, images, "flip_translate"),
                             expected_six.numpy(), rtol=1e-5, atol=1e-6)
  # Every view, borders included, against airbench's tensors.
  views = [np.asarray(v) for _, v in augment.tta_views(images, "flip_translate")]
  to_bhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)
  airbench_views = [x, x.flip(-1), translated[0], translated[0].flip(-1), translated[1],
                    translated[1].flip(-1)]
  for ours, theirs in zip(views, airbench_views):
    np.testing.assert_array_equal(ours, to_bhwc(theirs))
  # Reflection, not zeros nor edge copies: the shifted view's first row is the image's second.
  np.testing.assert_array_equal(views[2][:, 0, 1:], images_BHWC[:, 1, :-1])


def test_preprocess_refuses_a_mean_per_channel_of_another_channel_count():
  gray = np.zeros((2, 8, 8, 1), np.uint8)
  with pytest.raises(AssertionError):
    augment.preprocess(gray, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
  with pytest.raises(AssertionError):
    augment.preprocess(gray[0], (0.5,), (0.2,))  # One image, not a batch.
  assert augment.preprocess(gray, (0.5,), (0.2,)).shape == gray.shape
