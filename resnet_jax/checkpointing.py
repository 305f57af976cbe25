"""Orbax checkpoints: the latest N and the best by eval accuracy, saved async.

A checkpoint directory `<workdir>/checkpoints/<step>/` holds two items:
`state` (a dict with `params`, `batch_stats` and, for training checkpoints,
`opt_state` and `step`) and `config` (the resolved config as JSON). Converted
PyTorch weights use the same layout without `opt_state`.
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from resnet_jax.errors import UserError

BEST_METRIC = "eval_accuracy"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Saves and restores training checkpoints of one workdir."""

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = pp.AnyPreservationPolicy([
        pp.LatestN(n=max(1, keep)),
        pp.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                 keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=True,
        cleanup_tmp_directories=not read_only, read_only=read_only, create=not read_only,
        save_interval_steps=0 if read_only else 1)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "config"))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the highest eval accuracy; the latest where none has one."""
    best, best_value = None, None
    for step in self.steps():
      metrics = self.manager.metrics(step) or {}
      value = metrics.get(BEST_METRIC)
      if value is not None and (best_value is None or value >= best_value):
        best, best_value = step, value
    return best if best is not None else self.latest_step()

  def save(self, step: int, state: Mapping[str, Any], config: Mapping[str, Any],
           metrics: Mapping[str, float] | None = None, force: bool = False) -> bool:
    """Starts an asynchronous save; returns whether one was started."""
    return self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                config=ocp.args.JsonSave(dict(config))),
        metrics=dict(metrics) if metrics else None, force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, step: int, target: Mapping[str, Any] | None = None) -> dict:
    """Restores `state` at `step`, onto target's shapes and shardings if given."""
    if target is not None:
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
      args = ocp.args.StandardRestore(abstract)
    else:
      args = ocp.args.StandardRestore()
    return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]

  def restore_config(self, step: int) -> dict:
    return self.manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def restore_newest_intact(self, target: Mapping[str, Any] | None = None,
                            steps: list[int] | None = None) -> tuple[int, dict] | None:
    """Restores the newest checkpoint that reads back whole, warning about any that do not."""
    for step in sorted(self.steps() if steps is None else steps, reverse=True):
      try:
        return step, self.restore(step, target)
      except Exception as e:  # A damaged checkpoint fails in many ways; skip it.
        logging.warning("checkpoint %s is damaged and was skipped (%s: %s)",
                        os.path.join(self.directory, str(step)), type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """Maps a workdir, a checkpoints/ folder or one step's folder to (manager dir, step).

  The step is None when path names a whole directory of checkpoints: callers
  then take its best step.
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise UserError(f"checkpoint path {path} does not exist: pass a workdir or a "
                    "checkpoint directory written by resnet_jax")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isdir(os.path.join(path, "state")):
    name = os.path.basename(path)
    if name.isdigit():
      return os.path.dirname(path), int(name)
  if any(n.isdigit() for n in os.listdir(path)):
    return path, None
  raise UserError(f"{path} holds no resnet_jax checkpoint: pass a workdir, its "
                  "checkpoints/ folder, or one checkpoint step's folder")


def load_variables(path: str) -> tuple[dict, dict, int]:
  """Loads params and batch_stats (host arrays) and the saved config from any checkpoint path.

  Returns (variables, config, step). Falls back to older steps when the
  chosen one is damaged; raises UserError when nothing can be read.
  """
  directory, step = resolve_checkpoint(path)
  checkpointer = Checkpointer(directory, read_only=True)
  if step is None:
    step = checkpointer.best_step()
  if step is None:
    raise UserError(f"{path} holds no checkpoint: train first, or pass another path")
  steps = [s for s in checkpointer.steps() if s <= step]
  restored = checkpointer.restore_newest_intact(steps=steps)
  if restored is None:
    raise UserError(f"every checkpoint in {directory} up to step {step} is damaged: "
                    "pass another checkpoint")
  used_step, state = restored
  if used_step != step:
    logging.warning("using checkpoint %d instead of the damaged %d", used_step, step)
  try:
    config = checkpointer.restore_config(used_step)
  except Exception:
    config = {}
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
  return variables, config, used_step
