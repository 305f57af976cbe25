"""What judges a classifier beyond accuracy, from the eval's summed totals, on the host.

Per-class precision, recall, F1 and support, macro and weighted F1 and
balanced accuracy come from the confusion matrix (rows: true class, columns:
predicted); the expected calibration error (Guo et al. 2017, "On Calibration
of Modern Neural Networks") from per-bin sums of examples, confidences and
correct predictions. A ratio over nothing is 0, as scikit-learn's
`zero_division=0` makes it.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, and 0 where the denominator is 0."""
  return np.divide(numerator, denominator, out=np.zeros(np.shape(numerator), np.float64),
                   where=denominator > 0)


def class_scores(confusion: Sequence[Sequence[float]]) -> dict[str, Any]:
  """Per-class precision, recall, F1 and support; macro and weighted F1; balanced accuracy.

  Macro F1 averages the classes that occur among the labels or the predictions
  (scikit-learn's default labels), so a class absent from both does not count
  as a miss; balanced accuracy averages recall over the classes with examples
  (scikit-learn's `balanced_accuracy_score`).
  """
  confusion = np.asarray(confusion, np.float64)
  true_positives = confusion.diagonal()
  support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
  recall = _ratio(true_positives, support)
  # 2 tp / (2 tp + fp + fn): defined (0) where precision is not, as scikit-learn computes it.
  f1 = _ratio(2 * true_positives, support + predicted)
  seen, present = support + predicted > 0, support > 0
  return {"per_class_precision": _ratio(true_positives, predicted).tolist(),
          "per_class_recall": recall.tolist(), "per_class_f1": f1.tolist(),
          "per_class_support": support.astype(int).tolist(),
          "eval_macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
          "eval_weighted_f1": float(_ratio(np.sum(f1 * support), np.sum(support))),
          "eval_balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0}


def calibration(bin_count: Sequence[float], bin_confidence: Sequence[float],
                bin_correct: Sequence[float]) -> dict[str, Any]:
  """The expected calibration error and the per-bin figures of a reliability diagram.

  Args:
    bin_count: examples whose top softmax probability falls in each of the
      equal-width bins (i/B, (i+1)/B].
    bin_confidence: the sum of those examples' top probabilities, per bin.
    bin_correct: how many of them were predicted right, per bin.

  Returns:
    `eval_ece`: sum over bins of |B_b|/n * |accuracy(B_b) - confidence(B_b)|;
    `calibration`: the bins' edges, counts, accuracies and mean confidences
    (None for an empty bin).
  """
  count = np.asarray(bin_count, np.float64)
  confidence, correct = np.asarray(bin_confidence, np.float64), np.asarray(bin_correct, np.float64)
  num_bins = len(count)
  # |B_b|/n * |correct_b/|B_b| - confidence_b/|B_b|| = |correct_b - confidence_b| / n.
  ece = float(_ratio(np.sum(np.abs(correct - confidence)), np.sum(count)))
  mean = lambda sums: [float(s / c) if c > 0 else None for s, c in zip(sums, count)]
  return {"eval_ece": ece,
          "calibration": {"bin_edges": [i / num_bins for i in range(num_bins + 1)],
                          "count": count.astype(int).tolist(), "accuracy": mean(correct),
                          "confidence": mean(confidence)}}
