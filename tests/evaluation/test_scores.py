"""Precision, recall, F1, balanced accuracy and calibration error of an eval, through the compiled
eval programs, against scikit-learn and Guo et al.'s formula."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as sk

from resnet_jax import sharding
from resnet_jax.config import configuration
from resnet_jax.data import memory
from resnet_jax.evaluation import eval_steps, evaluator
from resnet_jax.models import build
from tests.conftest import tiny_config

NUM_CLASSES, NUM_EXAMPLES, BATCH = 10, 150, 16  # 10 batches, the last holding 6 real examples.
NEITHER, NEVER_PREDICTED, NEVER_TRUE = 9, 8, 7  # Classes of the edge cases scikit-learn covers.


def _lookup_model(num_examples: int, seed: int):
  """Pictures 1 x 2 whose two pixels index two tables of logits, so that any logits pass through
  the real compiled eval; padding (all-zero pictures) gets confident logits of class NEITHER."""
  rng = np.random.default_rng(seed)
  left, right = np.arange(1, num_examples + 1), rng.permutation(num_examples) + 1
  first, second = (rng.normal(0, 2.5, (256, NUM_CLASSES)).astype(np.float32) for _ in range(2))
  for table in (first, second):
    table[:, [NEITHER, NEVER_PREDICTED]] = -30.0
    table[0] = -30.0
    table[0, NEITHER] = 30.0  # Counted only if the mask failed.
  images = np.stack([left, right], axis=1).astype(np.uint8)[:, None, :, None]  # [N, 1, 2, 1]
  labels = rng.choice([c for c in range(NUM_CLASSES) if c not in (NEITHER, NEVER_TRUE)],
                      num_examples).astype(np.int32)

  def apply(variables, x, train=False):
    index = jnp.round(x[:, 0, :, 0] * 255).astype(jnp.int32)  # mean 0, std 1: x = pixel / 255.
    return variables["params"]["first"][index[:, 0]] + variables["params"]["second"][index[:, 1]]

  expected = lambda l, r: first[l] + second[r]
  return images, labels, {"first": first, "second": second}, apply, expected


def _config(tta: str):
  return configuration.resolve(tiny_config(eval_batch_size=BATCH, eval_tta=tta), {
      "num_classes": NUM_CLASSES, "class_names": [f"c{i}" for i in range(NUM_CLASSES)],
      "mean": (0.0,), "std": (1.0,), "input_shape": (1, 2, 1), "num_train_examples": 64})


def compiled_totals(config, apply, params, images, labels, pipeline: str) -> tuple[dict, int]:
  """(host totals, padded example count) of `apply` over images and labels, padded to
  config.eval_batch_size, through one compiled eval path: the whole split held on device
  ("memory") or batch after batch ("stream")."""
  mesh, batch = sharding.create_mesh(), config.eval_batch_size
  state = build.TrainState.create(apply_fn=apply, params=params, tx=optax.identity(),
                                  batch_stats={})
  padded = memory.pad_for_eval(memory.Split(images, labels), batch)
  data = dict(zip(("image", "label", "mask"), padded))
  if pipeline == "memory":
    placed = {k: sharding.put_replicated(v, mesh) for k, v in data.items()}
    totals = eval_steps.compile_evaluate(config, mesh)(state, placed)
  else:
    accumulate = eval_steps.compile_eval_batch(config, mesh)
    rows = len(padded[0]) if config.get("multi_label", False) else 0
    totals = jax.device_put(eval_steps.zero_eval_totals(config.num_classes, rows),
                            sharding.replicated(mesh))
    for start in range(0, len(padded[0]), batch):
      totals = accumulate(state, {k: v[start:start + batch] for k, v in data.items()}, totals)
  return jax.device_get(totals), len(padded[0])


def _device_eval(tta: str, pipeline: str, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
  """(summarized result, labels, the logits the eval should have seen) for one compiled path."""
  images, labels, params, apply, expected = _lookup_model(NUM_EXAMPLES, seed)
  totals, padded = compiled_totals(_config(tta), apply, params, images, labels, pipeline)
  assert padded > NUM_EXAMPLES  # Padding is there to be masked out.
  left, right = images[:, 0, 0, 0], images[:, 0, 1, 0]
  logits = expected(left, right)
  if tta == "flip":  # The picture and its mirror, half each (airbench's tta_level=1).
    logits = 0.5 * logits + 0.5 * expected(right, left)
  return evaluator.summarize(totals), labels, logits


@pytest.mark.parametrize("tta,pipeline", [("none", "memory"), ("flip", "stream")])
def test_class_scores_match_scikit_learn(tta, pipeline):
  result, y_true, logits = _device_eval(tta, pipeline)
  y_pred = logits.argmax(axis=1)
  labels = list(range(NUM_CLASSES))
  assert result["eval_count"] == NUM_EXAMPLES
  assert result["confusion_matrix"] == sk.confusion_matrix(y_true, y_pred, labels=labels).tolist()
  # The cases where a ratio has nothing to divide are all there.
  support, predicted = np.bincount(y_true, minlength=10), np.bincount(y_pred, minlength=10)
  assert support[NEITHER] == predicted[NEITHER] == 0
  assert support[NEVER_PREDICTED] > 0 and predicted[NEVER_PREDICTED] == 0
  assert support[NEVER_TRUE] == 0 and predicted[NEVER_TRUE] > 0
  precision, recall, f1, count = sk.precision_recall_fscore_support(
      y_true, y_pred, labels=labels, zero_division=0)
  np.testing.assert_allclose(result["per_class_precision"], precision, rtol=1e-12)
  np.testing.assert_allclose(result["per_class_recall"], recall, rtol=1e-12)
  np.testing.assert_allclose(result["per_class_f1"], f1, rtol=1e-12)
  assert result["per_class_support"] == count.tolist()
  assert result["eval_macro_f1"] == pytest.approx(
      sk.f1_score(y_true, y_pred, average="macro", zero_division=0), rel=1e-12)
  assert result["eval_weighted_f1"] == pytest.approx(
      sk.f1_score(y_true, y_pred, average="weighted", zero_division=0), rel=1e-12)
  with warnings.catch_warnings():  # "y_pred contains classes not in y_true": NEVER_TRUE.
    warnings.simplefilter("ignore", UserWarning)
    balanced = sk.balanced_accuracy_score(y_true, y_pred)
  assert result["eval_balanced_accuracy"] == pytest.approx(balanced, rel=1e-12)
  assert result["eval_accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))


@pytest.mark.parametrize("tta,pipeline", [("flip", "memory"), ("none", "stream")])
def test_calibration_error_is_guo_et_al_over_the_real_examples(tta, pipeline):
  result, y_true, logits = _device_eval(tta, pipeline, seed=1)
  # Guo et al. 2017, eq. (3): M = 15 bins I_m = ((m-1)/M, m/M] of the top softmax probability,
  # ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|.
  shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
  probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
  confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == y_true
  bins, ece, counts, accuracies, confidences = 15, 0.0, [], [], []
  for m in range(1, bins + 1):
    members = (confidence > (m - 1) / bins) & (confidence <= m / bins)
    counts.append(int(members.sum()))
    accuracies.append(correct[members].mean() if members.any() else None)
    confidences.append(confidence[members].mean() if members.any() else None)
    if members.any():
      ece += members.sum() / len(y_true) * abs(correct[members].mean() - confidence[members].mean())
  assert sum(c > 0 for c in counts) >= 5  # Confidences spread over many bins.
  assert ece > 0.01
  assert result["eval_ece"] == pytest.approx(ece, rel=1e-5)
  calibration = result["calibration"]
  assert calibration["count"] == counts
  assert calibration["bin_edges"] == pytest.approx(np.linspace(0, 1, bins + 1))
  for got, want in ((calibration["accuracy"], accuracies),
                    (calibration["confidence"], confidences)):
    assert [g is None for g in got] == [w is None for w in want]
    assert [g for g in got if g is not None] == pytest.approx(
        [w for w in want if w is not None], rel=1e-5)


def test_a_training_runs_eval_line_holds_the_new_figures_as_numbers():
  """metrics.jsonl eval lines stay one number per figure; the per-class lists stay out."""
  result, _, _ = _device_eval("none", "memory")
  logged = {k: result[k] for k in evaluator.SCALAR_METRICS if k in result}
  assert {"eval_macro_f1", "eval_weighted_f1", "eval_balanced_accuracy", "eval_ece"} <= set(logged)
  assert all(isinstance(v, (int, float)) for v in logged.values())
