"""The compiled evaluation: sums over padded, masked batches, divided once on the host.

`eval_step` is a pure function of (state, batch) that returns sums, not
means, over the real examples of a batch. `compile_evaluate` scans a whole
split held on device in one program; `compile_eval_batch` adds one streamed
batch to running totals. Both are jit-compiled over the data-parallel mesh.
Beside loss, correct and count they sum a confusion matrix (for per-class
precision, recall and F1) and, per confidence bin, the examples, their
confidences and their correct predictions (for the calibration error).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
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


def zero_eval_totals(num_classes: int) -> Metrics:
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
  return eval_step(state, batch, config.num_classes, config.eval_tta)


def compile_eval_batch(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """(state, batch, totals) -> totals + the batch's sums: for eval batches that stream in."""

  def accumulate(state: TrainState, batch: Batch, totals: Metrics) -> Metrics:
    return jax.tree.map(jnp.add, totals, _eval_batch(state, batch, config))

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
      return jax.tree.map(jnp.add, totals, _eval_batch(state, batch, config)), None

    totals, _ = jax.lax.scan(body, zero_eval_totals(config.num_classes), jnp.arange(num_batches))
    return totals

  return jax.jit(evaluate, out_shardings=replicated(mesh))
