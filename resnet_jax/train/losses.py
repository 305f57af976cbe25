"""The training loss: cross-entropy on the (soft) labels, and knowledge distillation.

`training_loss` is the one place where the loss is composed: it builds a
per-example loss from its terms, weights each example by its class where
config.class_balance is "loss", then takes the batch mean. A new term
belongs there, beside the ones it already sums. A multi-label run's label
loss is sigmoid binary cross-entropy, averaged over the classes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax.data import balance


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the loss is made of; static, bound into the compiled step.

  distill_alpha: weight of the distillation term (the label loss gets 1 - alpha);
    used only when the step is given teacher logits.
  distill_temperature: T of `distillation_kl`.
  multi_label: targets are multi-hot (a multi-label CSV): sigmoid binary
    cross-entropy per class instead of the softmax cross-entropy.
  multi_label_threshold: a class counts as predicted above this sigmoid
    probability (`train_accuracy`'s exact match).
  class_weights: w_c per class (`balance.class_weights`), or None: each
    example's loss is multiplied by sum_c target_c x w_c.
  """
  distill_alpha: float = 0.9
  distill_temperature: float = 4.0
  multi_label: bool = False
  multi_label_threshold: float = 0.5
  class_weights: tuple[float, ...] | None = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LossSpec":
    weights = None
    if config.get("class_balance", "none") == "loss":
      weights = tuple(float(w) for w in balance.class_weights(config.train_class_counts))
    return cls(distill_alpha=float(config.get("distill_alpha", cls.distill_alpha)),
               distill_temperature=float(config.get("distill_temperature",
                                                    cls.distill_temperature)),
               multi_label=bool(config.get("multi_label", False)),
               multi_label_threshold=float(config.get("multi_label_threshold", 0.5)),
               class_weights=weights)


def distillation_kl(student_logits_BK: jax.Array, teacher_logits_BK: jax.Array,
                    temperature: float) -> jax.Array:
  """Per example, KL(softmax(t / T) || softmax(s / T)) x T² (Hinton et al. 2015), in nats.

  The T² keeps the gradient's scale about the same as the label loss's for any T.
  """
  student_log_p = jax.nn.log_softmax(student_logits_BK.astype(jnp.float32) / temperature, -1)
  teacher_log_p = jax.nn.log_softmax(teacher_logits_BK.astype(jnp.float32) / temperature, -1)
  kl_B = jnp.sum(jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
  return kl_B * temperature ** 2


def multi_hot_targets(labels_BK: jax.Array, label_smoothing: float) -> jax.Array:
  """Multi-hot labels smoothed toward 1/2: each class's binary (t, 1 - t) smoothed as
  `optax.smooth_labels` smooths a two-class one-hot, t (1 - e) + e / 2."""
  return labels_BK.astype(jnp.float32) * (1.0 - label_smoothing) + label_smoothing / 2


def example_weights(targets_BK: jax.Array, class_weights: tuple[float, ...]) -> jax.Array:
  """Per example, sum_c target_c x w_c: its class's weight, a soft target's mixture of them."""
  return targets_BK.astype(jnp.float32) @ jnp.asarray(np.asarray(class_weights, np.float32))


def train_accuracy(logits_BK: jax.Array, targets_BK: jax.Array, spec: LossSpec) -> jax.Array:
  """The batch's accuracy beside its loss: the argmax against the target's dominant class, or,
  multi-label, the exact match of the classes above the threshold with those of target > 1/2."""
  if not spec.multi_label:
    return jnp.mean(jnp.argmax(logits_BK, -1) == jnp.argmax(targets_BK, -1))
  predicted = jax.nn.sigmoid(logits_BK.astype(jnp.float32)) > spec.multi_label_threshold
  return jnp.mean(jnp.all(predicted == (targets_BK > 0.5), axis=-1))


def training_loss(logits_BK: jax.Array, targets_BK: jax.Array,
                  teacher_logits_BK: jax.Array | None, spec: LossSpec
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The scalar loss the step differentiates, and its terms as batch means (for the metrics).

  Without teacher logits: the mean cross-entropy against `targets_BK` (soft
  labels: smoothed, perhaps mixed), no terms. With them: per example,
  (1 - alpha) x that cross-entropy + alpha x `distillation_kl`, then the
  mean; the terms are `label_loss` and `distill_loss` (unweighted means).
  Multi-label, the label loss is `optax.sigmoid_binary_cross_entropy`
  averaged over the classes. With class weights, the mean is of weight x
  per-example loss over the batch (divided by the batch size, not by the
  weights' sum as PyTorch's weighted cross-entropy does: the weights' mean
  of 1 over the training examples keeps the loss's scale).
  """
  if spec.multi_label:
    label_loss_B = optax.sigmoid_binary_cross_entropy(logits_BK, targets_BK).mean(axis=-1)
  else:
    label_loss_B = optax.softmax_cross_entropy(logits_BK, targets_BK)
  weigh = ((lambda loss_B: loss_B) if spec.class_weights is None else
           (lambda loss_B: example_weights(targets_BK, spec.class_weights) * loss_B))
  if teacher_logits_BK is None:
    return weigh(label_loss_B).mean(), {}
  distill_loss_B = distillation_kl(logits_BK, teacher_logits_BK, spec.distill_temperature)
  loss_B = (1.0 - spec.distill_alpha) * label_loss_B + spec.distill_alpha * distill_loss_B
  return weigh(loss_B).mean(), {"label_loss": label_loss_B.mean(),
                                "distill_loss": distill_loss_B.mean()}
