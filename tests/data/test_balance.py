"""Imbalanced classes: weights against scikit-learn, class-balanced orders on device and host."""

import jax
import numpy as np
import pytest
from absl import flags
from sklearn.utils.class_weight import compute_class_weight

from resnet_jax.data import augment, balance, streaming

LABELS = np.array([0] * 10 + [1] * 3 + [3] * 1 + [4] * 6, np.int32)  # Class 2: no example.
COUNTS = np.bincount(LABELS, minlength=5)


@pytest.fixture(scope="module", autouse=True)
def absl_flags_parsed():
  """Grain reads absl flags, which pytest never parses."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def test_class_weights_are_scikit_learns_balanced_weights_with_mean_one():
  weights = balance.class_weights(COUNTS)
  present = np.unique(LABELS)
  expected = compute_class_weight("balanced", classes=present, y=LABELS)
  np.testing.assert_allclose(weights[present], expected, rtol=1e-12)
  assert weights[2] == 0  # No example of it: no weight.
  assert np.mean(weights[LABELS]) == pytest.approx(1.0)  # Over the training examples.
  multi_hot = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
  assert balance.class_counts(multi_hot, 3) == [2, 1, 1]  # A class's positives.
  assert balance.class_counts(LABELS, 6) == [10, 3, 0, 1, 6, 0]


def test_a_balanced_epoch_gives_each_class_the_same_slots_and_its_examples_in_turn():
  order = balance.balanced_epoch(np.random.default_rng(0).permutation, LABELS, COUNTS)
  per_class = -(-len(LABELS) // 4)  # Four classes present: 5 slots each.
  assert len(order) == 4 * per_class
  np.testing.assert_array_equal(np.bincount(LABELS[order], minlength=5), [5, 5, 0, 5, 5])
  seen = np.bincount(order, minlength=len(LABELS))
  for label in (0, 1, 3, 4):
    members = seen[LABELS == label]
    quota = per_class / len(members)
    assert members.min() >= np.floor(quota) and members.max() <= np.ceil(quota)
  again = balance.balanced_epoch(np.random.default_rng(0).permutation, LABELS, COUNTS)
  other = balance.balanced_epoch(np.random.default_rng(1).permutation, LABELS, COUNTS)
  np.testing.assert_array_equal(order, again)
  assert not np.array_equal(order, other)


def _device_batches(seed: int, steps, batch: int = 4) -> np.ndarray:
  key = jax.random.fold_in(jax.random.key(seed), 1)
  draw = jax.jit(lambda step: augment.balanced_batch_indices(key, step, LABELS,
                                                             tuple(COUNTS), batch))
  return np.stack([np.asarray(draw(step)) for step in steps])


def test_device_order_is_balanced_and_a_function_of_seed_and_step():
  steps_per_epoch = len(LABELS) // 4
  batches = _device_batches(0, range(3 * steps_per_epoch))
  for epoch in range(3):
    drawn = batches[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch].reshape(-1)
    # A 20-slot epoch of 5 per class: all 20 slots read, so exactly 5 of each class.
    np.testing.assert_array_equal(np.bincount(LABELS[drawn], minlength=5), [5, 5, 0, 5, 5])
  resumed = _device_batches(0, [7, 3, 11])  # Any step, any order: the same batch.
  np.testing.assert_array_equal(resumed, batches[[7, 3, 11]])
  assert not np.array_equal(_device_batches(1, range(5)), batches[:5])
  assert not np.array_equal(batches[:5], batches[5:10])  # Each epoch drawn afresh.


class LabelledSource:
  """Example i: a 4x4 grey image of value i, its label LABELS[i]; `labels` as sources carry."""
  labels = LABELS

  def __len__(self) -> int:
    return len(LABELS)

  def __getitem__(self, i: int) -> dict:
    return {"image": np.full((4, 4, 1), i, np.uint8), "label": LABELS[i]}


ROWS = dict(global_batch_size=4, image_size=4, train_crop="pad", crop_scale=(0.08, 1.0), seed=3,
            class_balance="sample")


def _stream(**overrides) -> list[dict]:
  args = dict(ROWS, start_step=0, num_steps=10)
  args.update(overrides)
  with streaming.TrainStream(LabelledSource(), **args) as stream:
    return list(stream)


def test_stream_order_is_the_host_balanced_epoch_and_resumes_exactly():
  batches = _stream()
  indices = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
  for epoch in range(2):
    expected = balance.balanced_epoch(np.random.default_rng([3, epoch]).permutation, LABELS,
                                      np.bincount(LABELS))
    np.testing.assert_array_equal(indices[20 * epoch:20 * epoch + 20], expected)
    np.testing.assert_array_equal(np.bincount(LABELS[expected], minlength=5), [5, 5, 0, 5, 5])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), LABELS[indices])
  resumed = _stream(start_step=6)
  for got, want in zip(resumed, batches[6:]):
    np.testing.assert_array_equal(got["image"], want["image"])


def test_each_process_takes_its_rows_of_the_same_balanced_global_batch():
  whole = _stream(num_steps=5)
  shares = [_stream(num_steps=5, process_index=p, process_count=2) for p in range(2)]
  for step, batch in enumerate(whole):
    joined = np.concatenate([shares[p][step]["image"] for p in range(2)])
    np.testing.assert_array_equal(joined, batch["image"])


def test_unbalanced_stream_keeps_its_plain_permutation():
  batches = _stream(class_balance="none", num_steps=5)
  indices = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
  np.testing.assert_array_equal(indices, np.random.default_rng([3, 0]).permutation(20))
