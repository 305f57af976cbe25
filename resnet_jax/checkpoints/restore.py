"""The one restore path: a checkpoint's network, variables and saved config, for eval,
predict, features, export and fine-tuning (`load_model`; `load_variables` without the network).

`load_variables` takes a workdir, its checkpoints/ folder or one step's
folder, picks the best step (falling back to older ones when damaged) and
is safe on the workdir of a run in progress, which prunes its checkpoints
while others read them: the step picked is pinned (pins.py) and read from
the pin, where pruning cannot reach it. Only the pin itself can lose to the
pruning, when the step goes before its files are linked (milliseconds); the
reader then picks again from what is on disk.
"""

import errno
import os
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from resnet_jax.checkpoints import pins
from resnet_jax.checkpoints.checkpointing import (Checkpointer, CheckpointGone,
                                                  discard_failed_restore, storage_failure,
                                                  warn_damaged)
from resnet_jax.errors import UserError
from resnet_jax.models import ema, resnet

# How often a reader picks again when the checkpoints it picks keep being pruned.
MAX_PICKS = 20


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """Maps a workdir, a checkpoints/ folder or one step's folder to (manager dir, step).

  The step is None when path names a whole directory of checkpoints: callers
  then take its best step.
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise UserError(f"checkpoint path {path} does not exist: pass a workdir or a "
                    "checkpoint directory written by resnet_jax")
  if not os.path.isdir(path):
    raise UserError(f"checkpoint path {path} is a file, not a folder: pass a workdir, its "
                    "checkpoints/ folder, or one checkpoint step's folder")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if os.path.isdir(os.path.join(path, "state")):
    name = os.path.basename(path)
    if name.isdigit():
      return os.path.dirname(path), int(name)
  try:
    names = os.listdir(path)
  except OSError as e:
    raise UserError(f"cannot list checkpoint path {path} ({e.strerror or e}): pass a folder "
                    "you can read") from None
  if any(n.isdigit() for n in names):
    return path, None
  raise UserError(f"{path} holds no resnet_jax checkpoint: pass a workdir, its "
                  "checkpoints/ folder, or one checkpoint step's folder")


class Restored(NamedTuple):
  """A checkpoint's model variables (host arrays), its saved config and its step."""
  variables: dict
  config: dict
  step: int


def load_variables(path: str, action: str = "using") -> Restored:
  """The one way to read a checkpoint for evaluation, prediction and fine-tuning.

  `path` is a workdir, its checkpoints/ folder or one step's folder; of a
  folder of checkpoints, the best step is read. Falls back to older steps
  when the chosen one is damaged, logging "...; {action} step N instead";
  raises UserError when nothing can be read. Safe on the workdir of a run
  in progress: the step read is pinned, and one pruned before its pin is
  made is no damage: the pick starts again from what is on disk then.
  """
  directory, named_step = resolve_checkpoint(path)
  for _ in range(MAX_PICKS):
    try:
      return _load_best(path, directory, named_step, action)
    except CheckpointGone as e:
      if named_step is not None:
        raise UserError(f"checkpoint {e} was deleted before it could be read (the run writing there "
                        "prunes old checkpoints): pass a newer one, or the workdir") from None
      logging.info("checkpoint %s was deleted before it could be read (pruned by the run writing "
                   "there): picking again", e)
  raise UserError(f"the checkpoints in {directory} kept being deleted while being read: "
                  "try again, or pass one step's folder")


class LoadedModel(NamedTuple):
  """A checkpoint's network, ready to apply: `model.apply(variables, x, train=False)`."""
  model: resnet.ResNet
  variables: dict  # {"params", "batch_stats"}: the EMA weights where the run kept them.
  weights: str  # Which: "ema" or "raw".
  config: dict  # The saved config; num_classes and width read off the weights where absent.
  step: int
  restored: Restored  # Everything read: raw weights and EMA both.


def load_model(path: str, action: str = "using", dtype: Any = None) -> LoadedModel:
  """The one way to turn a checkpoint into a network and its weights.

  Args:
    path: a workdir, its checkpoints/ folder or one step's folder (published
      names such as `torchvision:resnet50` go through
      `resnet_jax.pretrained_checkpoint` first, which returns such a workdir).
    action: how the log names the use when it falls back to an older step.
    dtype: the computation dtype; None: bfloat16 for a run trained with
      half_precision, else float32.
  """
  restored = load_variables(path, action)
  config = model_config(restored, path)
  if dtype is None:
    import jax.numpy as jnp
    dtype = jnp.bfloat16 if config.get("half_precision") else jnp.float32
  try:
    model = resnet.create_model(config["model"], config["num_classes"], config["stem"],
                                config["width"], dtype=dtype)
  except ValueError as e:
    raise UserError(f"the config saved with {path} names no known model ({e}): pass a "
                    "checkpoint written by this version of resnet_jax") from None
  variables, weights = ema.preferred(restored.variables)
  return LoadedModel(model, variables, weights, config, restored.step, restored)


def model_config(restored: Restored, path: str) -> dict:
  """The saved config, checked to describe a ResNet; num_classes and width from the weights
  where an older or converted checkpoint left them out."""
  params = restored.variables.get("params") or {}
  if "fc" not in params or "bn1" not in params:
    raise UserError(f"{path} holds no ResNet that resnet_jax knows (its parameters are "
                    f"{', '.join(sorted(params)[:5]) or 'empty'}): pass a checkpoint written by "
                    "resnet_jax's training or by python -m resnet_jax.convert")
  config = dict(restored.config)
  for key in ("model", "stem"):
    if not config.get(key):
      raise UserError(f"the config saved with {path} has no {key!r}: it was written by an older "
                      "or foreign trainer; retrain or convert again")
  config["num_classes"] = int(config.get("num_classes") or np.shape(params["fc"]["bias"])[0])
  config["width"] = int(config.get("width") or np.shape(params["bn1"]["scale"])[-1])
  return config


def _load_best(path: str, directory: str, named_step: int | None, action: str) -> Restored:
  """load_variables' one pick, on a fresh listing; CheckpointGone when what it picked is pruned."""
  try:
    listing = Checkpointer(directory, read_only=True)
  except FileNotFoundError as e:  # A step pruned while Orbax listed the folder.
    raise CheckpointGone(e.filename or directory) from None
  except Exception as e:
    raise _unreadable(directory, e) from None
  try:
    step = named_step if named_step is not None else listing.best_step()
    if step is None:
      # Orbax lists the folder, then reads each step's metadata: a listing made just before
      # a save's rename into place, of a step pruned just after, comes back empty.
      if listing.latest_complete_step() is not None:
        raise CheckpointGone(directory)
      raise UserError(f"{path} holds no checkpoint: train first, or pass another path")
    named = named_step is not None  # One step's folder: that one, or none.
    candidates = [step] if named else [s for s in listing.steps() if s <= step]
  finally:
    listing.close()
  foreign = []  # Steps without a state item: another program's checkpoints, or damage.
  for candidate in sorted(candidates, reverse=True):
    step_dir = os.path.join(directory, str(candidate))
    try:
      state, config = read_step(directory, candidate)
    except CheckpointGone:
      raise
    except Exception as e:  # A damaged checkpoint fails in many ways; an older one may not.
      if storage_failure(e) == os.strerror(errno.EACCES):
        raise _unreadable(step_dir, e) from None
      if os.path.isdir(step_dir) and not os.path.isdir(os.path.join(step_dir, "state")):
        foreign.append(sorted(os.listdir(step_dir)))
      warn_damaged(step_dir, e)
      continue
    if candidate != step:
      logging.warning("the best checkpoint (step %d) is damaged; %s step %d instead", step,
                      action, candidate)
    variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
    if "ema" in state:
      variables["ema"] = state["ema"]
    return Restored(variables, config, candidate)
  if len(foreign) == len(candidates) and "config" in foreign[0]:
    raise UserError(f"checkpoint {os.path.join(directory, str(step))} has no state/ item (deleted, "
                    "or never written): pass another checkpoint, or the workdir of another run")
  if len(foreign) == len(candidates):
    raise UserError(f"{os.path.join(directory, str(step))} is not a resnet_jax checkpoint (it "
                    f"holds {', '.join(foreign[0]) or 'nothing'}, no state/): pass a checkpoint "
                    "written by resnet_jax (python -m resnet_jax.convert makes one of torch "
                    "weights)")
  raise UserError(f"checkpoint {os.path.join(directory, str(step))} is damaged"
                  f"{'' if named else ', and so is every earlier one'}: pass another "
                  "checkpoint, or the workdir of another run")


def _unreadable(path: str, error: Exception) -> UserError:
  """The error for checkpoints this reader may not read, or that no reader can list."""
  reason = storage_failure(error) or (str(error).strip().splitlines() or [""])[0][:200]
  return UserError(f"cannot read the checkpoints in {path} ({reason}): pass a checkpoint "
                   "folder you can read (check its permissions)")


def read_step(directory: str, step: int) -> tuple[dict, dict]:
  """(state, saved config) of one step, read from a pin of it; CheckpointGone if pruned first.

  Where no pin can be made (checkpoints this reader may not write to), reads
  in place: a step that fails to read and has gone from its folder meanwhile
  was pruned, not damaged (the writer removes a step by one rename).
  """
  step_dir = os.path.join(directory, str(step))
  try:
    with pins.pinned(directory, step) as root:
      return _read(Checkpointer(root, read_only=True, shown_as=directory), step)
  except pins.StepGone:
    raise CheckpointGone(step_dir) from None
  except pins.CannotPin as e:
    logging.info("cannot pin %s (%s): reading it in place", step_dir, e)
  try:
    return _read(Checkpointer(directory, read_only=True), step)
  except Exception:
    if not os.path.isdir(step_dir):
      discard_failed_restore()
      raise CheckpointGone(step_dir) from None
    raise


def _read(checkpointer: Checkpointer, step: int) -> tuple[dict, dict]:
  try:
    state = checkpointer.restore(step)
    try:
      config = checkpointer.restore_config(step)
    except Exception:  # Converted weights, or an older checkpoint: no config to tell.
      config = {}
    return state, config
  finally:
    checkpointer.close()
