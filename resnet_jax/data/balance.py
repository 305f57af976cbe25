"""Imbalanced classes (config.class_balance): class counts, loss weights, class-balanced epochs.

"loss" weights each training example by its class: w_c = N / (C x n_c), N
training examples, n_c of class c, C the classes with at least one (a class
with none gets 0). The weighted mean over the training examples is then 1
(sum_c n_c w_c / N = 1), and w is scikit-learn's
`compute_class_weight("balanced")`.

"sample" draws the classes equally instead: epoch e of the training order is
a class-balanced resampling of the split. Each of the C present classes gets
q = ceil(N / C) slots; slot k of class c holds the (k mod n_c)-th of its
examples in an order shuffled for the epoch (so a rare class's examples come
back in turns, each floor(q / n_c) or ceil(q / n_c) times), and the C x q
slots are shuffled. The epoch keeps N // batch steps, as an unbalanced one,
and reads the first (N // batch) x batch slots. The order is a pure function
of (seed, epoch) and the labels: the device draws it with JAX's keys
(augment.balanced_batch_indices), the host's streams with NumPy's
(examples.TrainExample); each is balanced and deterministic, and the two are
not the same order (as the unbalanced ones are not).

NumPy only: worker processes import it.
"""

from collections.abc import Callable

import numpy as np

CLASS_BALANCES = ("none", "loss", "sample")


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
  """Training examples per class: of each class index, or each column's positives (multi-hot)."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    return [int(n) for n in np.round(labels.sum(axis=0))]
  return [int(n) for n in np.bincount(labels, minlength=num_classes)]


def class_weights(counts: list[int] | np.ndarray) -> np.ndarray:
  """float64 [C]: N / (C_present x n_c), 0 for a class with no examples."""
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  weights = np.zeros_like(counts)
  weights[present] = counts.sum() / (present.sum() * counts[present])
  return weights


def epoch_slots(counts: list[int] | np.ndarray, num_examples: int) -> np.ndarray:
  """int [C_present x q]: each slot's position in the split grouped by class (ascending class,
  n_c places each), class by class, q slots each; slot k of class c is its (k mod n_c)-th."""
  counts = np.asarray(counts, np.int64)
  present = np.flatnonzero(counts > 0)
  per_class = -(-num_examples // len(present))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  slot_class = np.repeat(present, per_class)
  slot_k = np.tile(np.arange(per_class), len(present))
  return starts[slot_class] + slot_k % counts[slot_class]


def balanced_epoch(permutation: Callable[[int], np.ndarray], labels: np.ndarray,
                   counts: list[int] | np.ndarray) -> np.ndarray:
  """One class-balanced epoch: example indices, C_present x q of them (see the module's doc).

  `permutation(n)` is the epoch's source of random permutations of range(n),
  called twice: the examples' order within their class, then the slots'.
  """
  labels = np.asarray(labels)
  within = permutation(len(labels))
  grouped = within[np.argsort(labels[within], kind="stable")]
  slots = grouped[epoch_slots(counts, len(labels))]
  return slots[permutation(len(slots))]
