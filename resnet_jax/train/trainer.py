"""The host side of a training run: set up, restore, loop, evaluate, checkpoint, report.

`Trainer.__init__` reads the data, resolves the config, builds the state and
compiles the programs; `Trainer.train` resumes from the workdir and runs the
loop. The loop never waits on the device between log intervals: step
metrics stay on device (`metrics_buffer.MetricsBuffer`) until a log line, an
eval, a save or the end needs them, and are checked for NaN/Inf then. The
run's clock (`timing.TrainClock`) is saved with each checkpoint and goes on
from it on resume.
"""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import serialization

from resnet_jax.checkpoints import checkpointing, restore, workdir as workdirs
from resnet_jax.config import configuration
from resnet_jax.data import pipeline
from resnet_jax.train import profiling, signals, steps, teacher
from resnet_jax.evaluation import evaluator
from resnet_jax.interop import hub, pretrained
from resnet_jax.reporting import metrics_buffer, metrics_file, progress_bar, summary, timing
from resnet_jax.errors import NonFiniteLossError, Stopped, UserError
from resnet_jax.models import build
from resnet_jax import sharding


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value of tree is finite, as one device boolean."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def is_due(step: int, every: int, last_step: int) -> bool:
  """Whether an action repeated every `every` steps (and after the last step) is due after `step`."""
  return step % every == 0 or step == last_step


class Trainer:
  """One training run: its data, state, compiled programs, checkpoints and metrics."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, quiet: bool = False,
               stop: signals.StopRequested | None = None):
    # Entered by the caller before set-up, a signal while loading or compiling
    # stops the run cleanly; otherwise train() enters it for the loop.
    self.stop = stop or signals.StopRequested()
    configuration.validate(config)
    self.workdir = os.path.abspath(workdir)
    self.quiet = quiet
    self.is_lead = jax.process_index() == 0
    # Every process, not just the lead: each writes checkpoint shards there, and a
    # refusal on one alone would leave the others waiting on it.
    workdirs.check(self.workdir, config)
    self.mesh = sharding.create_mesh()
    # Before the data: a missing or damaged init_checkpoint fails without the wait.
    # A published name (torchvision:resnet50) is downloaded and converted once, then cached.
    init_checkpoint = (restore.load_model(hub.resolve(config.init_checkpoint), "fine-tuning from")
                       if config.init_checkpoint else None)
    # So is the teacher read first; its classes and channels are checked against the data.
    loaded_teacher = teacher.load(config, self.workdir) if config.teacher else None
    training_data = self._load_data(config)
    # Its variables go to the step as an argument, outside self.state: never saved.
    frozen_teacher = (teacher.place(loaded_teacher, self.config, self.mesh)
                      if loaded_teacher else None)
    self._create_state(init_checkpoint)
    self._compile(training_data, frozen_teacher)
    if self.stop.signal_name:  # Signalled during set-up: nothing to save, nothing written.
      message = (f"stopped by {self.stop.signal_name} during set-up, before training: nothing "
                 "was written: rerun the same command to start (or resume)")
      logging.warning(message)
      raise Stopped(self.stop.signal_name, message)
    # Only now, with the config and data known good, does anything touch the disk.
    os.makedirs(self.workdir, exist_ok=True)
    # One run per workdir: two would interleave metrics and prune each other's checkpoints.
    self.lock = workdirs.acquire_lock(self.workdir)
    try:
      self.checkpointer = checkpointing.Checkpointer(checkpointing.checkpoint_dir(self.workdir),
                                                     keep=self.config.keep_checkpoints)
      self.writer = metrics_file.MetricWriter(self.workdir, enabled=self.is_lead)
    except BaseException:
      self.lock.release()
      raise

  # Set-up ----------------------------------------------------------------

  def _load_data(self, config: ml_collections.ConfigDict) -> pipeline.TrainingData:
    """Opens the splits and resolves the config from them: self.config is final after this."""
    training_data = pipeline.open_training_data(config)
    self.config = config = configuration.resolve(config, training_data.facts)
    configuration.check_against_data(config)
    self.steps_per_epoch = config.num_train_examples // config.batch_size
    if self.steps_per_epoch == 0:
      raise UserError(f"batch_size {config.batch_size} exceeds the {config.num_train_examples} "
                      f"examples of {config.train_split}: use a smaller batch_size")
    self.num_train_steps = config.num_train_steps or max(
        1, int(round(config.num_epochs * self.steps_per_epoch)))
    return training_data

  def _create_state(self, init_checkpoint: restore.LoadedModel | None) -> None:
    config = self.config
    self.schedule = steps.learning_rate_schedule(config, self.steps_per_epoch,
                                                 self.num_train_steps)
    model = build.create_model(config)
    init_variables = (self._fit_init_checkpoint(model, init_checkpoint)
                      if init_checkpoint else None)
    self.state = steps.create_train_state(config, model, self.schedule, self.mesh,
                                          init_variables)

  def _fit_init_checkpoint(self, model, loaded: restore.LoadedModel) -> dict:
    """Variables of config.init_checkpoint fitted to this model (head re-initialised if needed)."""
    source = self.config.init_checkpoint
    init = steps.init_variables_fn(self.config, model)
    # A checkpoint with a weight EMA gives those weights: the ones its evaluation measured.
    weights = loaded.variables
    # Shapes first: a checkpoint of another architecture fails before anything compiles.
    pretrained.merge(jax.eval_shape(init)["params"], weights["params"], source)
    fresh = steps.run_unoptimized(init)
    params, head_reset = pretrained.merge(fresh["params"], weights["params"], source)
    batch_stats, _ = pretrained.merge(fresh.get("batch_stats", {}), weights["batch_stats"], source)
    logging.info("initialised from %s (step %d%s)%s", source, loaded.step,
                 ", EMA weights" if loaded.weights == "ema" else "",
                 f"; classifier head re-initialised for {self.config.num_classes} classes"
                 if head_reset else "")
    return {"params": params, "batch_stats": batch_stats}

  def _compile(self, training_data: pipeline.TrainingData,
               frozen_teacher: teacher.Teacher | None = None) -> None:
    self.train_step = steps.compile_train_step(self.config, self.mesh, self.schedule,
                                               teacher=frozen_teacher)
    if training_data.arrays is not None:
      self.train_input = pipeline.MemoryTrainInput(training_data.arrays.train, self.mesh)
      eval_split = training_data.arrays.eval
    else:
      self.train_input = pipeline.StreamTrainInput(self.config, training_data.train_source,
                                                   self.mesh, self.num_train_steps,
                                                   eval_source=training_data.eval_source)
      eval_split = training_data.eval_source
    self.evaluator = evaluator.Evaluator(self.config, self.mesh, eval_split,
                                         workers=getattr(self.train_input, "workers", None))

  # Checkpoints -------------------------------------------------------------

  def saved_state(self) -> dict:
    return serialization.to_state_dict(self.state)

  def restore_latest(self) -> None:
    """Resumes from the newest intact checkpoint of the workdir, if any, and its clock."""
    self.saved_clock = None
    if not self.checkpointer.steps():
      return
    restored = self.checkpointer.restore_newest_intact(target=self.saved_state())
    if restored is None:
      raise UserError(f"no checkpoint in {self.checkpointer.directory} can be read: move the "
                      "folder away to start afresh, or pass another --workdir")
    step, state_dict = restored
    self.state = serialization.from_state_dict(self.state, state_dict)
    self.saved_clock = self._restore_clock(step)
    logging.info("resumed from %s at step %d", self.checkpointer.directory, step)
    # The newer ones were damaged: moved aside, kept for a look, so that this run
    # can save those steps again and a later resume does not meet them first.
    if damaged := [s for s in self.checkpointer.steps() if s > step]:
      self._move_damaged_aside(damaged, step)

  def _restore_clock(self, step: int) -> dict:
    """The run's clock at the checkpoint of step; for a checkpoint saved without one (before
    the clock was saved), rebuilt from the metrics.jsonl lines up to that step."""
    try:
      saved = self.checkpointer.restore_clock(step)
    except Exception as e:  # The time is a report: a damaged one does not stop the resume.
      logging.warning("the clock saved with checkpoint %d does not read back (%s: %s): the run's "
                      "time is taken from metrics.jsonl", step, type(e).__name__, str(e)[:200])
      saved = None
    if saved is not None:
      return saved
    path = os.path.join(self.workdir, metrics_file.METRICS_FILE)
    records = metrics_file.read_metrics(self.workdir) if os.path.isfile(path) else []
    return timing.clock_from_log(records, step, self.config.target_accuracies)

  def _move_damaged_aside(self, damaged: list[int], step: int) -> None:
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

  def _what_is_saved(self) -> str:
    if self.checkpointer.latest_step() is None:
      return f"no checkpoint had been saved in {self.checkpointer.directory} yet"
    return f"the last saved checkpoint in {self.checkpointer.directory} is unchanged"

  def save(self, step: int, eval_metrics: dict | None, force: bool = False) -> None:
    # A finite loss can still be followed by an update to Inf: such a state is never saved.
    if not bool(all_finite((self.state.params, self.state.batch_stats, self.state.opt_state,
                            self.state.ema))):
      raise NonFiniteLossError(
          f"the parameters became NaN or Inf at step {step}; {self._what_is_saved()}: lower "
          "--config.learning_rate or check the data, then rerun to resume")
    metrics = {"eval_accuracy": eval_metrics["eval_accuracy"]} if eval_metrics else None
    self.checkpointer.save(step, self.saved_state(), configuration.to_json(self.config),
                           metrics, force=force, clock=self.clock.state())

  # The loop ----------------------------------------------------------------

  def train(self) -> dict:
    """Trains from the latest checkpoint to the last step; returns the run's result."""
    config = self.config
    self.restore_latest()
    if self.is_lead:
      workdirs.write_json(os.path.join(self.workdir, "config.json"), configuration.to_json(config))
    start = int(jax.device_get(self.state.step))
    self.train_input.start(start)
    every = lambda epochs: max(1, int(round(epochs * self.steps_per_epoch)))
    eval_every, checkpoint_every = every(config.eval_every_epochs), every(config.checkpoint_every_epochs)
    last = self.num_train_steps
    self.metrics = metrics_buffer.MetricsBuffer(config.batch_size, start)
    self.clock = timing.TrainClock(config.target_accuracies, self.saved_clock)
    self.started = time.time()
    last_eval = None
    self.progress = progress_bar.Progress(self.steps_per_epoch, last, start,
                                          enabled=self.is_lead and not self.quiet)
    # Steady state: from the second step of this run (its first compiles).
    profile = profiling.StepProfile(profiling.profile_dir(self.workdir), config.profile_steps,
                                    first_step=start + 2, enabled=self.is_lead)
    try:
      with self.stop as stop:
        stop.phase = "training"
        self.clock.start()
        for step in range(start + 1, last + 1):  # `step` counts the steps done after this one.
          profile.before(step)
          self.state, step_metrics = self.train_step(self.state, self.train_input.next())
          profile.after(step, self.state)
          if step == start + 1:
            self.clock.first_step_done(step_metrics)
          self.metrics.append(step_metrics)
          self.progress.advance(step)
          if is_due(step, config.log_every_steps, last):
            self._write_train_metrics(step)
          evaluated = is_due(step, eval_every, last)
          if evaluated:
            self._write_train_metrics(step)
            last_eval = self._evaluate(step)
          if is_due(step, checkpoint_every, last):
            self._write_train_metrics(step)  # Never save a state whose losses were not checked.
            with self.clock.paused():  # Saving is no training: time to accuracy leaves it out.
              self.save(step, last_eval if evaluated else None)
          if stop.requested(step):
            self._stop(step, stop.signal_name)
        self.checkpointer.wait()  # Still under the handler: Ctrl-C thrice gives the save up.
    except KeyboardInterrupt:  # Ctrl-C pressed thrice (or SIGINT to a multi-process run).
      raise self._aborted() from None
    finally:
      profile.close()  # A run that stops early still writes its trace.
      self.progress.close()
    best_step = self.checkpointer.best_step()
    return {"step": last, "eval": last_eval, "wall_time_s": self.clock.wall_time_s(),
            "best_checkpoint": os.path.join(self.checkpointer.directory, str(best_step)),
            "best_step": best_step}

  def _write_train_metrics(self, step: int) -> None:
    try:
      means = self.metrics.read(step)
    except NonFiniteLossError as e:
      raise NonFiniteLossError(f"{e}; {self._what_is_saved()}: lower --config.learning_rate or "
                               "check the data, then rerun to resume") from None
    if means is not None:
      self.writer.write(step, step / self.steps_per_epoch,
                        {**means, **self.clock.train_fields(), **self._data_wait_fields()})
      self.progress.update_metrics(means)

  def _evaluate(self, step: int) -> dict:
    with self.clock.paused():
      metrics = self.evaluator.run(self.state)
    reached = self.clock.eval_fields(metrics["eval_accuracy"])
    epoch = step / self.steps_per_epoch
    scalars = {k: metrics[k] for k in evaluator.SCALAR_METRICS if k in metrics}
    self.writer.write(step, epoch, {**scalars, **reached})
    self._report_data_wait()
    if self.is_lead:
      logging.info("step %d (epoch %.2f): eval_loss %.4f, eval_accuracy %.2f%% over %d examples%s",
                   step, epoch, metrics["eval_loss"], 100 * metrics["eval_accuracy"],
                   metrics["eval_count"], evaluator.describe_weights(metrics))
      for key, seconds in reached.items():
        if key.startswith("time_to_"):
          logging.info("eval accuracy first reached %s after %s of training", key[8:-2],
                       summary.format_duration(seconds))
    return metrics

  def _data_wait_fields(self) -> dict:
    """A streamed run's data_wait_fraction: the share of the wall time since the last train
    record that the loop spent blocked on the host pipeline (evaluations included)."""
    if not self.train_input.waits_on_host:
      return {}
    now, waited = time.time(), self.train_input.wait_seconds
    since, waited_before = getattr(self, "_wait_mark", (self.started, 0.0))
    self._wait_mark = (now, waited)
    return {"data_wait_fraction": min(1.0, (waited - waited_before) / max(now - since, 1e-9))}

  def _report_data_wait(self) -> None:
    """Says when streamed steps waited on the host pipeline for much of the time."""
    if not self.train_input.waits_on_host:
      return
    elapsed = time.time() - self.started
    fraction = self.train_input.wait_seconds / max(elapsed, 1e-9)
    if fraction > 0.1 and self.is_lead:
      logging.warning("the step waited on data for %.0f%% of the time: raise "
                      "--config.data_workers (now %d) if the machine has idle cores",
                      100 * fraction, self.config.data_workers)

  def _stop(self, step: int, signal_name: str) -> None:
    """Saves the current step (unless just saved on schedule) and raises Stopped."""
    self._write_train_metrics(step)
    if self.checkpointer.latest_step() != step:
      self.save(step, None, force=True)
    self.checkpointer.wait()
    self.progress.close()
    saved = os.path.join(self.checkpointer.directory, str(step))
    message = (f"stopped by {signal_name} at step {step}; checkpoint saved in {saved}: rerun "
               "the same command to resume")
    logging.warning(message)
    raise Stopped(signal_name, message)

  def _aborted(self) -> signals.Aborted:
    """The stop without a save: a save in flight is given up, the complete checkpoints stay."""
    self.checkpointer.abandon()
    directory, latest = self.checkpointer.directory, self.checkpointer.latest_complete_step()
    kept = (f"the last complete checkpoint, {os.path.join(directory, str(latest))}, is intact"
            if latest is not None else f"no checkpoint had been saved in {directory} yet")
    return signals.Aborted(f"interrupted without saving; {kept}: rerun the same command to "
                           "resume")

  def close(self) -> None:
    try:
      self.train_input.close()
      self.checkpointer.close()
      self.writer.close()
    finally:
      self.lock.release()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, quiet: bool = False,
                       print_summary: bool = False) -> dict:
  """Trains (resuming from workdir's latest checkpoint), evaluates and checkpoints."""
  # Entered before set-up: a signal while loading or compiling is a clean stop.
  with signals.StopRequested() as stop:
    trainer = Trainer(config, workdir, quiet, stop)
    try:
      result = trainer.train()
    finally:
      trainer.close()
  if print_summary and jax.process_index() == 0:
    print(final_summary(workdir, result))
  return result


def final_summary(workdir: str, result: dict) -> str:
  """The end-of-run table: accuracy, time, throughput and where the best checkpoint is."""
  facts = summary.summarize_run(workdir, result["step"], result.get("best_step"))
  return summary.format_summary(facts, result["best_checkpoint"], workdir)
