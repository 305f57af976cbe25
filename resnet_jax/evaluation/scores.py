"""What judges a classifier beyond accuracy, from the eval's summed totals, on the host.

Per-class precision, recall, F1 and support, macro and weighted F1 and
balanced accuracy come from the confusion matrix (rows: true class, columns:
predicted); the expected calibration error (Guo et al. 2017, "On Calibration
of Modern Neural Networks") from per-bin sums of examples, confidences and
correct predictions. A ratio over nothing is 0, as scikit-learn's
`zero_division=0` makes it.

A multi-label eval is judged from every example's sigmoid probabilities
(`multi_label_scores`): mean average precision over the classes with a
positive example, and per-class precision, recall and F1 of the classes
above a threshold; its accuracy is the exact-match ratio (every class right,
scikit-learn's `accuracy_score` on indicator arrays).
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


def average_precision(labels_N: np.ndarray, scores_N: np.ndarray) -> float:
  """One class's average precision, sum_n (R_n - R_(n-1)) P_n over the distinct scores from the
  highest (scikit-learn's `average_precision_score`: no interpolation, ties one threshold)."""
  order = np.argsort(-np.asarray(scores_N), kind="stable")
  ranked, positive = np.asarray(scores_N)[order], np.asarray(labels_N)[order] > 0.5
  last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
  true_positives = np.cumsum(positive)[last_of_tie]
  precision = true_positives / (last_of_tie + 1)
  recall = true_positives / max(true_positives[-1], 1)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multi_label_scores(labels_NC: np.ndarray, scores_NC: np.ndarray,
                       threshold: float) -> dict[str, Any]:
  """mAP and per-class AP; per-class precision, recall, F1 and support at `threshold`; macro and
  weighted F1; the exact-match accuracy.

  Args:
    labels_NC: multi-hot labels of the real examples.
    scores_NC: their sigmoid probabilities; a class counts as predicted where
      its probability is above `threshold`.

  Returns:
    `eval_map` averages the AP of the classes with at least one positive
    (scikit-learn's macro `average_precision_score` gives the others 0);
    `per_class_ap` is None for the rest. Macro F1 averages every class, as
    scikit-learn's `f1_score(average="macro")` does on indicator arrays.
  """
  truth, scores = np.asarray(labels_NC) > 0.5, np.asarray(scores_NC, np.float64)
  predicted = scores > threshold
  true_positives = np.sum(truth & predicted, axis=0).astype(np.float64)
  support, predicted_count = truth.sum(axis=0), predicted.sum(axis=0)
  f1 = _ratio(2 * true_positives, support + predicted_count)
  ap = [average_precision(truth[:, c], scores[:, c]) if support[c] else None
        for c in range(truth.shape[1])]
  present = [value for value in ap if value is not None]
  return {"eval_map": float(np.mean(present)) if present else 0.0, "per_class_ap": ap,
          "per_class_precision": _ratio(true_positives, predicted_count).tolist(),
          "per_class_recall": _ratio(true_positives, support).tolist(),
          "per_class_f1": f1.tolist(), "per_class_support": support.astype(int).tolist(),
          "eval_macro_f1": float(f1.mean()) if len(f1) else 0.0,
          "eval_weighted_f1": float(_ratio(np.sum(f1 * support), np.sum(support))),
          "eval_accuracy": float(np.mean(np.all(truth == predicted, axis=1)))
          if len(truth) else 0.0}
