"""The compiled evaluation: sums over padded, masked batches, divided once on the host.

`eval_step` is a pure function of (state, batch) that returns sums, not
means, over the real examples of a batch. `compile_evaluate` scans a whole
split held on device in one program; `compile_eval_batch` adds one streamed
batch to running totals. Both are jit-compiled over the data-parallel mesh.
Beside loss, correct and count they sum a confusion matrix (for per-class
precision, recall and F1) and, per confidence bin, the examples, their
confidences and their correct predictions (for the calibration error).

A multi-label run (multi-hot labels) sums only its loss (sigmoid binary
cross-entropy, averaged over the classes) and count; exact average precision
needs every score, so its totals also hold each example's sigmoid
probabilities, labels and mask, written row by row into buffers the size of
the padded split (`add_batch`), and the host computes mAP and the rest from
them (scores.multi_label_scores). Eval sets are small enough for that: 4
bytes x 2 x classes per example.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from resnet_jax.data import augment
from resnet_jax.models.build import TrainState, compute_dtype, cross_entropy
from resnet_jax.sharding import batch_sharded, replicated

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

# Equal-width bins (i/15, (i+1)/15] of the top softmax probability: Guo et al. 2017,
# "On Calibration of Modern Neural Networks", whose ECE figures use 15.
CALIBRATION_BINS = 15


def calibration_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
  """Per confidence bin: the real examples, their summed confidence and their correct count."""
  probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  confidence = jnp.max(probabilities, axis=-1)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  # ceil(c * 15) - 1 puts c in (i/15, (i+1)/15]; the top softmax probability is never 0.
  bins = jnp.clip(jnp.ceil(confidence * CALIBRATION_BINS).astype(jnp.int32) - 1,
                  0, CALIBRATION_BINS - 1)
  per_bin = lambda values: jnp.zeros((CALIBRATION_BINS,), jnp.float32).at[bins].add(values * mask)
  return {"bin_count": per_bin(jnp.ones_like(confidence)), "bin_confidence": per_bin(confidence),
          "bin_correct": per_bin(correct)}


def eval_step(state: TrainState, batch: Batch, num_classes: int, tta: str = "none") -> Metrics:
  """Sums (not means) over the real examples of a padded batch; logits averaged over `tta` views."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = augment.tta_logits(lambda x: state.apply_fn(variables, x, train=False),
                              batch["image"], tta)
  mask = batch["mask"]
  predictions = jnp.argmax(logits, -1)
  losses = cross_entropy(logits, batch["label"], num_classes, 0.0)
  confusion = jnp.zeros((num_classes, num_classes), jnp.float32).at[
      batch["label"], predictions].add(mask)
  sums = {"loss_sum": jnp.sum(losses * mask), "correct": jnp.sum((predictions == batch["label"]) * mask),
          "count": jnp.sum(mask), "confusion": confusion,
          **calibration_sums(logits, batch["label"], mask)}
  if num_classes > 5:
    _, top5 = jax.lax.top_k(logits, 5)
    sums["correct_top5"] = jnp.sum(jnp.any(top5 == batch["label"][:, None], axis=-1) * mask)
  return sums


def multi_label_eval_step(state: TrainState, batch: Batch, tta: str = "none") -> Metrics:
  """A multi-label batch's loss and count sums, and under "rows" its per-example probabilities,
  labels and mask (for `add_batch` to write into the totals)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = augment.tta_logits(lambda x: state.apply_fn(variables, x, train=False),
                              batch["image"], tta)
  labels, mask = batch["label"].astype(jnp.float32), batch["mask"]
  losses = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
  return {"loss_sum": jnp.sum(losses * mask), "count": jnp.sum(mask),
          "rows": {"scores": jax.nn.sigmoid(logits), "labels": labels, "mask": mask}}


def add_batch(totals: Metrics, metrics: Metrics) -> Metrics:
  """totals + a batch's sums; a multi-label batch's rows written at totals["next_row"]."""
  added = {name: totals[name] + value for name, value in metrics.items() if name != "rows"}
  if "rows" not in metrics:
    return {**totals, **added}
  start = totals["next_row"]
  for name, value in metrics["rows"].items():
    added[name] = jax.lax.dynamic_update_slice_in_dim(totals[name], value, start, axis=0)
  return {**totals, **added, "next_row": start + metrics["rows"]["mask"].shape[0]}


def zero_eval_totals(num_classes: int, multi_label_rows: int = 0) -> Metrics:
  """Zero sums; for a multi-label eval of multi_label_rows padded examples, empty row buffers."""
  if multi_label_rows:
    return {"loss_sum": jnp.zeros(()), "count": jnp.zeros(()), "next_row": jnp.zeros((), jnp.int32),
            "scores": jnp.zeros((multi_label_rows, num_classes)),
            "labels": jnp.zeros((multi_label_rows, num_classes)),
            "mask": jnp.zeros((multi_label_rows,))}
  totals = {"loss_sum": jnp.zeros(()), "correct": jnp.zeros(()), "count": jnp.zeros(()),
            "confusion": jnp.zeros((num_classes, num_classes)),
            **{name: jnp.zeros((CALIBRATION_BINS,))
               for name in ("bin_count", "bin_confidence", "bin_correct")}}
  if num_classes > 5:
    totals["correct_top5"] = jnp.zeros(())
  return totals


def _eval_batch(state: TrainState, batch: Batch, config: ml_collections.ConfigDict) -> Metrics:
  batch = dict(batch, image=augment.preprocess(batch["image"], config.mean, config.std,
                                               config.image_size, compute_dtype(config)))
  if config.get("multi_label", False):
    return multi_label_eval_step(state, batch, config.eval_tta)
  return eval_step(state, batch, config.num_classes, config.eval_tta)


def compile_eval_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """(state, batch, totals) -> totals + the batch's sums: for eval batches that stream in."""

  def accumulate(state: TrainState, batch: Batch, totals: Metrics) -> Metrics:
    return add_batch(totals, _eval_batch(state, batch, config))

  return jax.jit(accumulate, donate_argnums=2, out_shardings=replicated(mesh))


def compile_evaluate(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """(state, padded eval data on device) -> summed metrics over every batch, in one program."""
  eval_batch_size = config.eval_batch_size

  def evaluate(state: TrainState, data: Batch) -> Metrics:
    num_batches = data["label"].shape[0] // eval_batch_size

    def body(totals, index):
      batch = {k: jax.lax.with_sharding_constraint(
          jax.lax.dynamic_slice_in_dim(v, index * eval_batch_size, eval_batch_size),
          batch_sharded(mesh)) for k, v in data.items()}
      return add_batch(totals, _eval_batch(state, batch, config)), None

    rows = data["label"].shape[0] if config.get("multi_label", False) else 0
    totals, _ = jax.lax.scan(body, zero_eval_totals(config.num_classes, rows),
                             jnp.arange(num_batches))
    return totals

  return jax.jit(evaluate, out_shardings=replicated(mesh))
