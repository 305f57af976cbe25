"""The one restore path: a checkpoint's variables and saved config, for eval, predict, export
and fine-tuning.

`load_variables` takes a workdir, its checkpoints/ folder or one step's
folder, picks the best step (falling back to older ones when damaged) and
is safe on the workdir of a run in progress, which prunes its checkpoints
while others read them.
"""

import os
from typing import NamedTuple

from absl import logging

from resnet_jax.checkpoints.checkpointing import Checkpointer, CheckpointGone
from resnet_jax.errors import UserError

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
  in progress: a checkpoint that run prunes while it is read is no damage,
  and the pick starts again from what is on disk then.
  """
  directory, named_step = resolve_checkpoint(path)
  for _ in range(MAX_PICKS):
    try:
      return _load_best(path, directory, named_step, action)
    except CheckpointGone as e:
      if named_step is not None:
        raise UserError(f"checkpoint {e} was deleted while being read (the run writing there "
                        "prunes old checkpoints): pass a newer one, or the workdir") from None
      logging.info("checkpoint %s was deleted while being read (pruned by the run writing "
                   "there): picking again", e)
  raise UserError(f"the checkpoints in {directory} kept being deleted while being read: "
                  "try again, or pass one step's folder")


def _load_best(path: str, directory: str, named_step: int | None, action: str) -> Restored:
  """load_variables' one pick, on a fresh listing; CheckpointGone when what it picked is pruned."""
  try:
    checkpointer = Checkpointer(directory, read_only=True)
  except FileNotFoundError as e:  # A step pruned while Orbax listed the folder.
    raise CheckpointGone(e.filename or directory) from None
  try:
    return _load_from(checkpointer, path, directory, named_step, action)
  finally:
    checkpointer.close()


def _load_from(checkpointer: Checkpointer, path: str, directory: str, named_step: int | None,
               action: str) -> Restored:
  step = named_step if named_step is not None else checkpointer.best_step()
  if step is None:
    raise UserError(f"{path} holds no checkpoint: train first, or pass another path")
  named = named_step is not None  # One step's folder: that one, or none.
  steps = [step] if named else [s for s in checkpointer.steps() if s <= step]
  restored = checkpointer.restore_newest_intact(steps=steps, skip_gone=False)
  if restored is None:
    raise UserError(f"checkpoint {os.path.join(directory, str(step))} is damaged"
                    f"{'' if named else ', and so is every earlier one'}: pass another "
                    "checkpoint, or the workdir of another run")
  used_step, state = restored
  try:
    config = checkpointer.restore_live(used_step, read=checkpointer.restore_config)
  except CheckpointGone:
    raise
  except Exception:
    config = {}
  if used_step != step:
    logging.warning("the best checkpoint (step %d) is damaged; %s step %d instead", step, action,
                    used_step)
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
  if "ema" in state:
    variables["ema"] = state["ema"]
  return Restored(variables, config, used_step)
