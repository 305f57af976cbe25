"""Optimiser, learning-rate schedule, initial state and the compiled train step.

`train_step` is a pure function of (state, batch). `compile_train_step`
wraps it with the on-device part of the input pipeline (gather a batch of
the dataset held on device, augment, normalise), the frozen teacher's
forward pass when distilling, and `jax.jit` over a one-axis mesh of every
device: the batch is split over `data`, parameters are replicated, and
BatchNorm statistics are taken over the global batch. Everything it needs is
read from the resolved config. The loss itself is `losses.training_loss`'s.
"""

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.data import augment
from resnet_jax.interop import pretrained
from resnet_jax.models import ema as ema_lib, resnet
from resnet_jax.models.build import (TrainState, compute_dtype, dropout_in_eval_mode,
                                    model_input_shape, pytorch_default_init, smoothed_targets)
from resnet_jax.sharding import DATA_AXIS, batch_sharded, replicated
from resnet_jax.train import losses, teacher as teacher_lib, xla_cpu

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_train_steps: int) -> optax.Schedule:
  """Linear warmup, then cosine or linear decay to 0 (or a constant rate).

  Warmup starts at learning_rate / warmup_steps rather than 0, so that the
  first step already trains.
  """
  lr = config.learning_rate
  warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), num_train_steps)
  start = lr / warmup_steps if warmup_steps else lr
  if config.lr_schedule == "constant":
    if not warmup_steps:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(start, lr, warmup_steps), optax.constant_schedule(lr)],
        [warmup_steps])
  if config.lr_schedule == "linear":
    decay = optax.linear_schedule(lr, 0.0, max(num_train_steps - warmup_steps, 1))
    if not warmup_steps:
      return decay
    return optax.join_schedules([optax.linear_schedule(start, lr, warmup_steps), decay],
                                [warmup_steps])
  # decay_steps counts the warmup too.
  return optax.warmup_cosine_decay_schedule(start, lr, warmup_steps,
                                            max(num_train_steps, warmup_steps + 1))


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     params: Any) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay on the gradient, as torch.optim.SGD."""

  def sgd(lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    decay_mask = None if config.decay_bn_and_bias else (
        lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov))

  if not config.freeze_backbone and config.backbone_lr_scale == 1.0:
    return sgd(schedule)
  backbone = (optax.set_to_zero() if config.freeze_backbone else
              sgd(lambda step: schedule(step) * config.backbone_lr_scale))
  labels = traverse_util.path_aware_map(
      lambda path, _: "head" if pretrained.is_head(path) else "backbone", params)
  return optax.multi_transform({"head": sgd(schedule), "backbone": backbone}, labels)


def init_variables_fn(config: ml_collections.ConfigDict, model: resnet.ResNet) -> Callable[[], Any]:
  """A function returning the model's freshly initialised variables.

  conv_init "torchvision": the model's own initialisers (kaiming-normal fan-out
  convolutions, as torchvision's ResNet); "pytorch": convolutions and the
  classifier redrawn as torch.nn's defaults (`build.pytorch_default_init`).
  """
  dummy = jnp.zeros((1, *model_input_shape(config)), compute_dtype(config))

  def init() -> Any:
    variables = model.init(jax.random.key(config.seed), dummy, train=False)
    if config.get("conv_init", "torchvision") == "pytorch":
      key = jax.random.fold_in(jax.random.key(config.seed), 6)
      variables = {**variables, "params": pytorch_default_init(variables["params"], key)}
    return variables

  return init


def create_train_state(config: ml_collections.ConfigDict, model: resnet.ResNet,
                       schedule: optax.Schedule, mesh: Mesh,
                       init_variables: Mapping | None = None) -> TrainState:
  """Initialises (or takes `init_variables` into) a replicated train state."""
  fresh_variables = init_variables_fn(config, model)

  def init() -> TrainState:
    variables = fresh_variables()
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    if init_variables is not None:
      params, batch_stats = init_variables["params"], init_variables["batch_stats"]
    return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats,
                             tx=create_optimizer(config, schedule, params),
                             ema=ema_lib.init(params, batch_stats) if config.ema_decay else None,
                             frozen_backbone=config.freeze_backbone)

  return run_unoptimized(init, out_shardings=replicated(mesh))


def run_unoptimized(fn: Callable[[], Any], out_shardings: Any = None) -> Any:
  """Compiles `fn` without optimisation and calls it: for programs that run once.

  On CPU, XLA spent 50 s optimising the random initialisers of even
  resnet_tiny (5 s unoptimised).
  """
  return jax.jit(fn, out_shardings=out_shardings).lower().compile(
      compiler_options={"xla_backend_optimization_level": 0})()


def train_step(state: TrainState, batch: Batch, *, schedule: optax.Schedule,
               dropout_key: jax.Array, grad_accum_steps: int, ema_decay: float,
               ema_warmup_power: float | None = None,
               loss_spec: losses.LossSpec = losses.LossSpec()) -> tuple[TrainState, Metrics]:
  """One optimizer step on a preprocessed batch; returns the new state and batch means.

  `batch["target"]` holds soft labels (one-hot or multi-hot, smoothed, perhaps
  mixed); train accuracy counts the argmax of the logits against the argmax of
  the target (its dominant label), or a multi-label run's exact matches
  (`losses.train_accuracy`). `batch["teacher_logits"]`, when present, are
  a teacher's logits for the same images, distilled as `loss_spec` says
  (`losses.training_loss`). With grad_accum_steps = k > 1 the arrays
  come split as [k, batch / k, ...]: the micro-batches run in turn, each
  normalised by its own BatchNorm statistics and updating the running ones,
  and their mean gradient makes the one update. The weight EMA (if any)
  moves with `ema.decay_at(state.step, ema_decay, ema_warmup_power)`.
  """
  # Checked while tracing (shapes are static): a mismatch names the arrays, not an XLA op.
  chex.assert_rank(batch["image"], 4 if grad_accum_steps == 1 else 5)
  chex.assert_equal_shape_prefix((batch["image"], batch["target"]),
                                 1 if grad_accum_steps == 1 else 2)
  if "teacher_logits" in batch:
    chex.assert_equal_shape((batch["teacher_logits"], batch["target"]))
  dropout_key = jax.random.fold_in(dropout_key, state.step)
  # A frozen backbone runs as a fixed feature extractor: BN uses its running statistics,
  # while the head's dropout stays on as in full training.
  train = not state.frozen_backbone
  dropout_mode = contextlib.nullcontext if train else dropout_in_eval_mode

  def loss_fn(params, batch_stats, micro: Batch, key):
    with dropout_mode():
      logits, updates = state.apply_fn({"params": params, "batch_stats": batch_stats},
                                       micro["image"], train=train, mutable=["batch_stats"],
                                       rngs={"dropout": key})
    targets = micro["target"]
    loss, terms = losses.training_loss(logits, targets, micro.get("teacher_logits"), loss_spec)
    accuracy = losses.train_accuracy(logits, targets, loss_spec)
    return loss, ({"train_loss": loss, "train_accuracy": accuracy, **terms},
                  updates.get("batch_stats", batch_stats))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, (loss_metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch,
                                                      dropout_key)
  else:
    def micro_step(carry, indexed):
      grad_sum, batch_stats = carry
      index, micro = indexed
      (_, (loss_metrics, batch_stats)), grads = grad_fn(
          state.params, batch_stats, micro, jax.random.fold_in(dropout_key, index))
      return (jax.tree.map(jnp.add, grad_sum, grads), batch_stats), loss_metrics

    carry = (jax.tree.map(jnp.zeros_like, state.params), state.batch_stats)
    (grad_sum, batch_stats), per_micro = jax.lax.scan(
        micro_step, carry, (jnp.arange(grad_accum_steps), dict(batch)))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
    loss_metrics = jax.tree.map(jnp.mean, per_micro)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.ema is not None:
    decay = ema_lib.decay_at(state.step, ema_decay, ema_warmup_power)
    new_state = new_state.replace(ema=ema_lib.update(state.ema, new_state.params,
                                                     new_state.batch_stats, decay))
  update = jax.tree.map(jnp.subtract, new_state.params, state.params)
  metrics = {**loss_metrics,
             "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
             # Global L2 norms, as big_vision logs them (l2_grads, l2_params, l2_updates).
             "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(new_state.params),
             "update_norm": optax.tree.norm(update)}
  return new_state, metrics


def split_micro_batches(x: jax.Array, num_micro: int, mesh: Mesh) -> jax.Array:
  """[B, ...] -> [num_micro, B / num_micro, ...], micro-batch j taking rows j, j + num_micro, ...

  Interleaved so that each device's micro-batches come from the rows it
  already holds (batch_size is a multiple of num_micro x devices).
  """
  x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, DATA_AXIS)))


def compile_train_step(config: ml_collections.ConfigDict, mesh: Mesh,
                       schedule: optax.Schedule, cpu_tuning: bool = True,
                       teacher: teacher_lib.Teacher | None = None) -> Callable:
  """(state, data) -> (state, metrics): augments, normalises and trains in one program.

  In memory (config.input_pipeline != "stream") `data` is the whole training
  split on device and each step's batch is drawn from it by
  `augment.batch_indices` (`balanced_batch_indices` with class_balance
  "sample"); streamed, `data` is the step's batch itself. With
  cpu_tuning, the CPU backend compiles it with `xla_cpu`'s options. With a
  teacher, its logits for the final augmented batch (crop, flip, cutout and
  mix as the student sees them) join the batch, and its variables are the
  program's third argument: replicated, not donated, bound by `WithTeacher`.
  """
  batch_size, num_examples = config.batch_size, config.num_train_examples
  streamed = config.get("input_pipeline") == "stream"
  # A random-resized crop was already taken on the host; only the flip is left.
  padding = 0 if config.get("train_crop") == "random_resized" else config.crop_padding
  num_micro = config.grad_accum_steps
  # Classes drawn equally (class_balance=sample): on device, as the stream draws them on the host.
  balanced = config.get("class_balance", "none") == "sample"
  multi_label = config.get("multi_label", False)  # Multi-hot labels, from a multi-label CSV.
  root = jax.random.key(config.seed)
  data_key, augment_key, dropout_key, cutout_key, mix_key = (
      jax.random.fold_in(root, i) for i in range(1, 6))
  step_fn = functools.partial(train_step, schedule=schedule, dropout_key=dropout_key,
                              grad_accum_steps=num_micro, ema_decay=config.ema_decay,
                              ema_warmup_power=(config.ema_warmup_power if config.ema_warmup
                                                else None),
                              loss_spec=losses.LossSpec.from_config(config))
  # The program sees the teacher's variables only through its argument, never as constants.
  teacher_spec = teacher._replace(variables=None) if teacher is not None else None

  def step(state: TrainState, data: Batch,
           teacher_variables: Any = None) -> tuple[TrainState, Metrics]:
    if streamed:
      images, labels = data["image"], data["label"]
    else:
      indices = (augment.balanced_batch_indices(data_key, state.step, data["label"],
                                                config.train_class_counts, batch_size)
                 if balanced else
                 augment.batch_indices(data_key, state.step, num_examples, batch_size))
      indices = jax.lax.with_sharding_constraint(indices, batch_sharded(mesh))
      images, labels = data["image"][indices], data["label"][indices]
    images = augment.random_crop_flip(jax.random.fold_in(augment_key, state.step), images,
                                      padding, config.random_flip)
    images = augment.preprocess(images, config.mean, config.std, config.image_size,
                                compute_dtype(config))
    images = augment.cutout(jax.random.fold_in(cutout_key, state.step), images,
                            config.cutout_size)
    targets = (losses.multi_hot_targets(labels, config.label_smoothing) if multi_label else
               smoothed_targets(labels, config.num_classes, config.label_smoothing))
    images, targets = augment.mix(jax.random.fold_in(mix_key, state.step), images, targets,
                                  config.mixup_alpha, config.cutmix_alpha)
    batch = {"image": images, "target": targets}
    if teacher is not None:
      batch["teacher_logits"] = teacher_lib.logits(teacher_spec, teacher_variables, images,
                                                   config.mean, config.std)
    if num_micro > 1:
      batch = {name: split_micro_batches(x, num_micro, mesh) for name, x in batch.items()}
    return step_fn(state, batch)

  # On CPU, XLA options measured to make this step about 1.9x faster (xla_cpu.py).
  jitted = jax.jit(step, donate_argnums=0, out_shardings=(replicated(mesh), replicated(mesh)),
                   compiler_options=xla_cpu.train_step_options() if cpu_tuning else None)
  return jitted if teacher is None else WithTeacher(jitted, teacher.variables)


class WithTeacher:
  """The compiled step called as (state, data), the teacher's variables passed as its third
  argument: an argument, not constants in the program, and never part of the saved state."""

  def __init__(self, jitted: Callable, teacher_variables: Any):
    self.jitted, self.teacher_variables = jitted, teacher_variables

  def __call__(self, state: TrainState, data: Batch) -> tuple[TrainState, Metrics]:
    return self.jitted(state, data, self.teacher_variables)


