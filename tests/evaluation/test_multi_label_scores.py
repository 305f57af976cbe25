"""A multi-label eval through the compiled programs (memory and streamed): mAP, per-class AP,
precision, recall and F1 at the threshold, exact match and loss, against scikit-learn."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as sk

from resnet_jax.config import configuration
from resnet_jax.evaluation import evaluator, scores
from tests.conftest import tiny_config
from tests.evaluation.test_scores import compiled_totals

CLASSES, EXAMPLES, BATCH = 6, 75, 16  # 5 batches, the last holding 11 real examples.
NO_POSITIVE = 5  # A class no example has: no AP, left out of mAP.


def _lookup_model(seed: int):
  """Pictures 1 x 2 whose pixels index two logit tables (rounded to 0.5, so scores tie), and
  multi-hot labels that follow the logits loosely; padding (zero pictures) gets logits of +30."""
  rng = np.random.default_rng(seed)
  left, right = np.arange(1, EXAMPLES + 1), rng.permutation(EXAMPLES) + 1
  first, second = (np.round(rng.normal(0, 1.5, (256, CLASSES)) * 2).astype(np.float32) / 2
                   for _ in range(2))
  for table in (first, second):
    table[0] = 15.0  # Padding: every class predicted, counted only if the mask failed.
  images = np.stack([left, right], axis=1).astype(np.uint8)[:, None, :, None]
  logits = first[left] + second[right]
  labels = (logits + rng.normal(0, 2, logits.shape) > 0.5).astype(np.float32)
  labels[:, NO_POSITIVE] = 0

  def apply(variables, x, train=False):
    index = jnp.round(x[:, 0, :, 0] * 255).astype(jnp.int32)
    return variables["params"]["first"][index[:, 0]] + variables["params"]["second"][index[:, 1]]

  return images, labels, {"first": first, "second": second}, apply, logits


def _device_eval(pipeline: str, threshold: float, seed: int = 0):
  """(summarized result, the totals' gathered rows, labels, logits) of one compiled path."""
  images, labels, params, apply, logits = _lookup_model(seed)
  config = configuration.resolve(tiny_config(eval_batch_size=BATCH), {
      "num_classes": CLASSES, "class_names": [f"c{i}" for i in range(CLASSES)],
      "mean": (0.0,), "std": (1.0,), "input_shape": (1, 2, 1), "num_train_examples": 64,
      "multi_label": True})
  totals, _ = compiled_totals(config, apply, params, images, labels, pipeline)
  return evaluator.summarize(totals, threshold), totals, labels, logits


@pytest.mark.parametrize("pipeline,threshold", [("memory", 0.5), ("stream", 0.3)])
def test_multi_label_figures_match_scikit_learn(pipeline, threshold):
  result, totals, y_true, logits = _device_eval(pipeline, threshold)
  real = totals["mask"] > 0
  assert real.sum() == EXAMPLES and result["eval_count"] == EXAMPLES
  y_score = totals["scores"][real]
  np.testing.assert_array_equal(totals["labels"][real], y_true)  # In the split's order.
  np.testing.assert_allclose(y_score, 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)
  assert len(np.unique(y_score[:, 0])) < EXAMPLES  # Ties, which AP must take as one threshold.
  present = [c for c in range(CLASSES) if y_true[:, c].any()]
  assert present == [c for c in range(CLASSES) if c != NO_POSITIVE]
  assert result["eval_map"] == pytest.approx(
      sk.average_precision_score(y_true[:, present], y_score[:, present], average="macro"),
      rel=1e-9)
  for c in range(CLASSES):
    expected = (sk.average_precision_score(y_true[:, c], y_score[:, c]) if c in present
                else None)
    assert result["per_class_ap"][c] == (pytest.approx(expected, rel=1e-9)
                                         if expected is not None else None)
  y_pred = (y_score > threshold).astype(int)
  precision, recall, f1, support = sk.precision_recall_fscore_support(
      y_true, y_pred, zero_division=0)
  np.testing.assert_allclose(result["per_class_precision"], precision, rtol=1e-12)
  np.testing.assert_allclose(result["per_class_recall"], recall, rtol=1e-12)
  np.testing.assert_allclose(result["per_class_f1"], f1, rtol=1e-12)
  assert result["per_class_support"] == support.tolist()
  for average in ("macro", "weighted"):
    assert result[f"eval_{average}_f1"] == pytest.approx(
        sk.f1_score(y_true, y_pred, average=average, zero_division=0), rel=1e-12)
  assert result["eval_accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
  assert 0 < result["eval_accuracy"] < 1
  probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
  assert result["eval_loss"] == pytest.approx(
      sk.log_loss(y_true.ravel(), probabilities.ravel(), labels=[0, 1]), rel=1e-5)
  assert result["multi_label_threshold"] == threshold
  assert "confusion_matrix" not in result and "eval_ece" not in result


def test_average_precision_matches_scikit_learn_with_ties_and_one_positive():
  rng = np.random.default_rng(3)
  for trial in range(20):
    n = int(rng.integers(1, 30))
    y = (rng.random(n) < rng.random()).astype(int)
    y[rng.integers(n)] = 1  # At least one positive.
    s = np.round(rng.random(n) * rng.integers(1, 6)) / 5  # Few distinct values: ties.
    assert scores.average_precision(y, s) == pytest.approx(
        sk.average_precision_score(y, s), rel=1e-12), (y, s)


def test_a_class_without_positives_is_what_scikit_learn_averages_as_zero():
  """scikit-learn's macro AP counts a class without positives as 0 (with a warning); mAP here
  leaves it out, and equals scikit-learn's over the classes that have some."""
  y = np.array([[1, 0], [0, 0], [1, 0]])
  s = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3]])
  result = scores.multi_label_scores(y, s, 0.5)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    everything = sk.average_precision_score(y, s, average="macro")
  assert result["eval_map"] == pytest.approx(sk.average_precision_score(y[:, 0], s[:, 0]))
  assert result["eval_map"] == pytest.approx(2 * everything)
  assert result["per_class_ap"][1] is None


def test_eval_printout_and_scalars_of_a_multi_label_run():
  result, _, _, _ = _device_eval("memory", 0.5)
  logged = {k: result[k] for k in evaluator.SCALAR_METRICS if k in result}
  assert {"eval_map", "eval_accuracy", "eval_loss", "eval_macro_f1"} <= set(logged)
  report = {**result, "checkpoint": "ckpt", "step": 3, "eval_split": "test",
            "class_names": [f"c{i}" for i in range(CLASSES)]}
  lines = evaluator.format_eval(report).splitlines()
  assert f"mAP {100 * result['eval_map']:.2f}%" in lines[0]
  assert "exact-match accuracy" in lines[0] and len(lines) == 2 + CLASSES
  assert lines[2 + NO_POSITIVE].split()[1] == "-"  # No AP for a class without positives.
