"""The host side of a run: load, restore, loop, evaluate, checkpoint, report.

The loop never waits on the device between log intervals: step metrics stay
on device until `log_every_steps` have run (or an eval, a save or the end
comes), then are read at once, checked for NaN/Inf and written.
"""

import json
import math
import os
import signal
import tempfile
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import serialization

from resnet_jax import (checkpointing, configuration, input_pipeline, pretrained, progress_bar,
                        reporting, train)
from resnet_jax.errors import UserError


class NonFiniteLossError(Exception):
  """The loss (or the parameters) became NaN or Inf; such a state is never saved."""


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value of tree is finite, as one device boolean."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


class StopRequested:
  """Turns SIGTERM/SIGINT into a stop that the loop checks once per step.

  With several processes all must stop, and save, at the same step, or each
  waits in Orbax's save for the others forever. There SIGTERM, sent to any of
  them, is left to jax.distributed's preemption notifier, which agrees on the
  step; SIGINT keeps Python's default and ends the run without a save.
  """

  def __init__(self):
    self.signal_name = None
    self._previous = {}
    self._agreed = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread() and not self._agreed:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signal_name is not None:  # A second signal: stop at once.
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint at the current step, then exiting",
                    self.signal_name)

  def requested(self, step: int) -> bool:
    """Whether to stop after `step`; every process must ask at every step."""
    if self._agreed and self.signal_name is None:
      from jax.experimental import multihost_utils
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "SIGTERM"
        logging.warning("SIGTERM received by a process of this run: saving a checkpoint at "
                        "step %d, then exiting", step)
    return self.signal_name is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def writable(folder: str) -> bool:
  """Whether a folder can be written, found by trying: os.access says yes to root on read-only mounts."""
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".resnet_jax_write_test", dir=folder))
    return True
  except OSError:
    return False


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir that cannot be written or whose earlier run has other settings."""
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not writable(existing):
    raise UserError(f"workdir {workdir} cannot be created or written ({existing} is not a "
                    "writable folder): pass a writable --workdir")
  saved = configuration.read_saved(workdir)
  if saved is not None:
    configuration.check_same_architecture(saved, config, workdir)


def write_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


class Run:
  """Everything a training run holds between steps."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, quiet: bool = False):
    configuration.validate(config)
    self.workdir = os.path.abspath(workdir)
    self.quiet = quiet
    self.is_lead = jax.process_index() == 0
    # Every process, not just the lead: each writes checkpoint shards there, and a
    # refusal on one alone would leave the others waiting on it.
    check_workdir(self.workdir, config)
    self.mesh = train.create_mesh()
    # Before the data: a missing or damaged init_checkpoint fails without the wait.
    self.init_checkpoint = (checkpointing.load_variables(config.init_checkpoint)
                            if config.init_checkpoint else None)
    self.dataset = input_pipeline.load_dataset(config)
    self.config = config = resolve(config, self.dataset)
    train_split = self.dataset.train
    self.num_examples = len(train_split.labels)
    self.steps_per_epoch = self.num_examples // config.batch_size
    if self.steps_per_epoch == 0:
      raise UserError(f"batch_size {config.batch_size} exceeds the {self.num_examples} "
                      f"examples of {config.train_split}: use a smaller batch_size")
    self.num_train_steps = config.num_train_steps or max(
        1, int(round(config.num_epochs * self.steps_per_epoch)))
    self.schedule = train.learning_rate_schedule(config, self.steps_per_epoch,
                                                 self.num_train_steps)
    self.model = train.create_model(config, self.dataset.num_classes)
    init_variables = self._load_init_checkpoint() if config.init_checkpoint else None
    self.state = train.create_train_state(config, self.model, train.model_input_shape(config),
                                          self.schedule, self.mesh, init_variables)
    self.train_step = train.compile_train_step(config, self.mesh, self.schedule,
                                               self.dataset.mean, self.dataset.std,
                                               self.num_examples)
    self.eval_batch_size = config.eval_batch_size or config.batch_size
    self.evaluate = train.compile_evaluate(config, self.mesh, self.dataset.num_classes,
                                           self.dataset.mean, self.dataset.std,
                                           self.eval_batch_size)
    self.train_data = {"image": train.put_replicated(train_split.images, self.mesh),
                       "label": train.put_replicated(train_split.labels, self.mesh)}
    images, labels, mask = input_pipeline.pad_for_eval(self.dataset.eval, self.eval_batch_size)
    self.eval_data = {k: train.put_replicated(v, self.mesh)
                      for k, v in (("image", images), ("label", labels), ("mask", mask))}
    # Only now, with the config and data known good, does anything touch the disk.
    os.makedirs(self.workdir, exist_ok=True)
    self.checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(self.workdir),
                                                   keep=config.keep_checkpoints)
    self.writer = reporting.MetricWriter(self.workdir, enabled=self.is_lead)

  def _load_init_checkpoint(self) -> dict:
    """Variables of config.init_checkpoint fitted to this model (head re-initialised if needed)."""
    config, model = self.config, self.model
    variables, _, step = self.init_checkpoint
    init = lambda: model.init(jax.random.key(config.seed), np.zeros(
        (1, *train.model_input_shape(config)), np.float32), train=False)
    # Shapes first: a checkpoint of another architecture fails before anything compiles.
    pretrained.merge(jax.eval_shape(init)["params"], variables["params"], config.init_checkpoint)
    fresh = train.run_once(init)
    params, head_reset = pretrained.merge(fresh["params"], variables["params"],
                                          config.init_checkpoint)
    batch_stats, _ = pretrained.merge(fresh.get("batch_stats", {}), variables["batch_stats"],
                                      config.init_checkpoint)
    logging.info("initialised from %s (step %d)%s", config.init_checkpoint, step,
                 f"; classifier head re-initialised for {self.dataset.num_classes} classes"
                 if head_reset else "")
    return {"params": params, "batch_stats": batch_stats}

  # Checkpoints ----------------------------------------------------------

  def saved_state(self) -> dict:
    return serialization.to_state_dict(self.state)

  def restore_latest(self) -> None:
    """Resumes from the newest intact checkpoint of the workdir, if any."""
    if not self.checkpointer.steps():
      return
    restored = self.checkpointer.restore_newest_intact(target=self.saved_state())
    if restored is None:
      raise UserError(f"no checkpoint in {self.checkpointer.directory} can be read: move the "
                      "folder away to start afresh, or pass another --workdir")
    step, state_dict = restored
    self.state = serialization.from_state_dict(self.state, state_dict)
    logging.info("resumed from %s at step %d", self.checkpointer.directory, step)
    # The newer ones were damaged: moved aside, kept for a look, so that this run
    # can save those steps again and a later resume does not meet them first.
    if damaged := [s for s in self.checkpointer.steps() if s > step]:
      destination = os.path.join(self.workdir, "damaged_checkpoints")
      if self.is_lead:
        for bad in damaged:
          moved = self.checkpointer.move_aside(bad, destination)
          logging.warning("damaged checkpoint %s moved to %s (delete it once you have looked "
                          "at it); training goes on from step %d",
                          os.path.join(self.checkpointer.directory, str(bad)), moved, step)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("damaged checkpoints moved aside")
        self.checkpointer.manager.reload()

  def save(self, step: int, eval_metrics: dict | None, force: bool = False) -> None:
    # A finite loss can still be followed by an update to Inf: such a state is never saved.
    if not bool(all_finite((self.state.params, self.state.batch_stats, self.state.opt_state))):
      raise NonFiniteLossError(
          f"the parameters became NaN or Inf at step {step}; the last saved checkpoint in "
          f"{self.checkpointer.directory} is unchanged: lower --config.learning_rate or check "
          "the data, then rerun to resume")
    metrics = {"eval_accuracy": eval_metrics["eval_accuracy"]} if eval_metrics else None
    self.checkpointer.save(step, self.saved_state(), configuration.to_json(self.config),
                           metrics, force=force)

  # Loop -----------------------------------------------------------------

  def run_eval(self, step: int) -> dict:
    totals = jax.device_get(self.evaluate(self.state, self.eval_data))
    return train.summarize_eval(totals)

  def train_and_evaluate(self) -> dict:
    config = self.config
    self.restore_latest()
    if self.is_lead:
      write_json(os.path.join(self.workdir, "config.json"), configuration.to_json(config))
    start = int(jax.device_get(self.state.step))
    every = lambda epochs: max(1, int(round(epochs * self.steps_per_epoch)))
    eval_every, checkpoint_every = every(config.eval_every_epochs), every(config.checkpoint_every_epochs)
    pending, last_eval = [], None
    tick_time, tick_step, started = time.time(), start, time.time()
    progress = progress_bar.Progress(self.steps_per_epoch, self.num_train_steps, start,
                                     enabled=self.is_lead and not self.quiet)

    def flush(step: int) -> None:
      """Reads the pending step metrics (one device sync), checks and writes them."""
      nonlocal pending, tick_time, tick_step
      if not pending:
        return
      values = jax.device_get(pending)
      first = step - len(values) + 1  # Loop index of values[0]; its step number is one more.
      for offset, record in enumerate(values):
        if not math.isfinite(float(record["train_loss"])):
          raise NonFiniteLossError(
              f"loss became {float(record['train_loss'])} at step {first + offset + 1}; the last "
              f"saved checkpoint in {self.checkpointer.directory} is unchanged: lower "
              "--config.learning_rate or check the data, then rerun to resume")
      now = time.time()
      means = {k: float(np.mean([r[k] for r in values])) for k in ("train_loss", "train_accuracy")}
      means["learning_rate"] = float(values[-1]["learning_rate"])
      means["images_per_second"] = (step + 1 - tick_step) * config.batch_size / max(now - tick_time, 1e-9)
      self.writer.write(step + 1, (step + 1) / self.steps_per_epoch, means)
      progress.update_metrics(means)
      pending, tick_time, tick_step = [], now, step + 1

    with StopRequested() as stop:
      step = start
      for step in range(start, self.num_train_steps):
        self.state, metrics = self.train_step(self.state, self.train_data)
        pending.append(metrics)
        progress.advance(step + 1)
        done = step + 1 == self.num_train_steps
        if (step + 1) % config.log_every_steps == 0 or done:
          flush(step)
        if (step + 1) % eval_every == 0 or done:
          flush(step)
          last_eval = self.run_eval(step + 1)
          self._log_eval(step + 1, last_eval, time.time() - started)
        if (step + 1) % checkpoint_every == 0 or done:
          flush(step)  # Never save a state whose losses were not checked.
          self.save(step + 1, last_eval if (step + 1) % eval_every == 0 or done else None)
        if stop.requested(step + 1):
          flush(step)
          if self.checkpointer.latest_step() != step + 1:  # Not just saved on schedule.
            self.save(step + 1, None, force=True)
          self.checkpointer.wait()
          progress.close()
          logging.warning("stopped by %s at step %d; checkpoint saved in %s: rerun the same "
                          "command to resume", stop.signal_name, step + 1,
                          os.path.join(self.checkpointer.directory, str(step + 1)))
          self.close()
          raise SystemExit(143 if stop.signal_name == "SIGTERM" else 130)
    progress.close()
    self.checkpointer.wait()
    best_step = self.checkpointer.best_step()
    return {"step": self.num_train_steps, "eval": last_eval, "wall_time_s": time.time() - started,
            "best_checkpoint": os.path.join(self.checkpointer.directory, str(best_step))}

  def _log_eval(self, step: int, metrics: dict, wall_time_s: float) -> None:
    epoch = step / self.steps_per_epoch
    self.writer.write(step, epoch, {"eval_loss": metrics["eval_loss"],
                                    "eval_accuracy": metrics["eval_accuracy"],
                                    "wall_time_s": wall_time_s})
    if self.is_lead:
      logging.info("step %d (epoch %.2f): eval_loss %.4f, eval_accuracy %.2f%% over %d examples",
                   step, epoch, metrics["eval_loss"], 100 * metrics["eval_accuracy"],
                   metrics["eval_count"])

  def close(self) -> None:
    self.checkpointer.close()
    self.writer.close()


def resolve(config: ml_collections.ConfigDict, dataset: input_pipeline.Dataset) -> ml_collections.ConfigDict:
  """The config with what the data decided filled in; this is what gets saved."""
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    config.num_classes = dataset.num_classes
    config.mean, config.std = tuple(dataset.mean), tuple(dataset.std)
    config.class_names = list(dataset.class_names)
    config.input_shape = tuple(dataset.train.images.shape[1:])  # Native H, W, C.
    config.eval_batch_size = config.eval_batch_size or config.batch_size
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, quiet: bool = False) -> dict:
  """Trains (resuming from workdir's latest checkpoint), evaluates and checkpoints."""
  run = Run(config, workdir, quiet)
  try:
    result = run.train_and_evaluate()
  finally:
    run.close()
  return result


def final_summary(workdir: str, result: dict) -> str:
  """The end-of-run table: accuracy, time, throughput and where the best checkpoint is."""
  return reporting.format_summary(reporting.summarize_run(workdir), result["best_checkpoint"],
                                  workdir)
