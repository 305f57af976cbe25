"""A per-epoch console progress bar (tqdm) fed only with values already on the host."""

from collections.abc import Mapping

from tqdm import tqdm


class Progress:
  """One bar per epoch showing loss, images/s and the epoch's ETA."""

  def __init__(self, steps_per_epoch: int, num_train_steps: int, start_step: int,
               enabled: bool = True):
    self.steps_per_epoch = steps_per_epoch
    self.num_train_steps = num_train_steps
    self.enabled = enabled
    self.bar = None
    self.postfix = {}
    self._open(start_step)

  def _open(self, step: int) -> None:
    if not self.enabled or step >= self.num_train_steps:
      return
    epoch = step // self.steps_per_epoch
    total = min(self.steps_per_epoch, self.num_train_steps - epoch * self.steps_per_epoch)
    self.bar = tqdm(total=total, initial=step - epoch * self.steps_per_epoch,
                    desc=f"epoch {epoch + 1}", unit="step", dynamic_ncols=True, leave=True)
    if self.postfix:
      self.bar.set_postfix(self.postfix, refresh=False)

  def advance(self, step: int) -> None:
    """Called after `step` steps are done."""
    if self.bar is None:
      return
    self.bar.update(1)
    if step % self.steps_per_epoch == 0:
      self.bar.close()
      self._open(step)

  def update_metrics(self, metrics: Mapping[str, float]) -> None:
    self.postfix = {"loss": f"{metrics['train_loss']:.3f}",
                    "img/s": f"{metrics['images_per_second']:.0f}"}
    if self.bar is not None:
      self.bar.set_postfix(self.postfix, refresh=False)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None
