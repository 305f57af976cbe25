"""The training loss: cross-entropy on the (soft) labels, and knowledge distillation.

`training_loss` is the one place where the loss is composed: it builds a
per-example loss from its terms, then takes the batch mean. A new term (or
per-example weights) belongs there, beside the ones it already sums.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """What the loss is made of; static, bound into the compiled step.

  distill_alpha: weight of the distillation term (the label loss gets 1 - alpha);
    used only when the step is given teacher logits.
  distill_temperature: T of `distillation_kl`.
  """
  distill_alpha: float = 0.9
  distill_temperature: float = 4.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LossSpec":
    return cls(distill_alpha=float(config.get("distill_alpha", cls.distill_alpha)),
               distill_temperature=float(config.get("distill_temperature",
                                                    cls.distill_temperature)))


def distillation_kl(student_logits_BK: jax.Array, teacher_logits_BK: jax.Array,
                    temperature: float) -> jax.Array:
  """Per example, KL(softmax(t / T) || softmax(s / T)) x T² (Hinton et al. 2015), in nats.

  The T² keeps the gradient's scale about the same as the label loss's for any T.
  """
  student_log_p = jax.nn.log_softmax(student_logits_BK.astype(jnp.float32) / temperature, -1)
  teacher_log_p = jax.nn.log_softmax(teacher_logits_BK.astype(jnp.float32) / temperature, -1)
  kl_B = jnp.sum(jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
  return kl_B * temperature ** 2


def training_loss(logits_BK: jax.Array, targets_BK: jax.Array,
                  teacher_logits_BK: jax.Array | None, spec: LossSpec
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The scalar loss the step differentiates, and its terms as batch means (for the metrics).

  Without teacher logits: the mean cross-entropy against `targets_BK` (soft
  labels: smoothed, perhaps mixed), no terms. With them: per example,
  (1 - alpha) x that cross-entropy + alpha x `distillation_kl`, then the
  mean; the terms are `label_loss` and `distill_loss`.
  """
  label_loss_B = optax.softmax_cross_entropy(logits_BK, targets_BK)
  if teacher_logits_BK is None:
    return label_loss_B.mean(), {}
  distill_loss_B = distillation_kl(logits_BK, teacher_logits_BK, spec.distill_temperature)
  loss_B = (1.0 - spec.distill_alpha) * label_loss_B + spec.distill_alpha * distill_loss_B
  return loss_B.mean(), {"label_loss": label_loss_B.mean(), "distill_loss": distill_loss_B.mean()}
