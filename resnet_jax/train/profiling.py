"""A JAX profiler trace of a few steady-state training steps (config.profile_steps).

The trace goes to `<workdir>/profile/plugins/profile/<run>/*.xplane.pb`; open it with
TensorBoard's profile plugin (`tensorboard --logdir <workdir>/profile`) or in
https://ui.perfetto.dev. On CPU, `XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true` adds one
event per XLA operation (convolution, fusion, transpose) to the threads that ran it.
"""

import os

import jax


def profile_dir(workdir: str) -> str:
  return os.path.join(workdir, "profile")


class StepProfile:
  """Traces steps first_step .. first_step + num_steps - 1 (1-based step numbers).

  Call `before(step)` before a step is dispatched and `after(step, outputs)` once it is;
  `close()` ends an unfinished trace (a run that stops early still leaves its trace).
  """

  def __init__(self, directory: str, num_steps: int, first_step: int, enabled: bool = True):
    self.directory, self.num_steps, self.first_step = directory, num_steps, first_step
    self.last_step = first_step + num_steps - 1
    self.enabled = enabled and num_steps > 0
    self.active = False

  def before(self, step: int) -> None:
    if self.enabled and step == self.first_step and not self.active:
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step >= self.last_step:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    """Waits for the traced steps to finish on the device, then writes the trace."""
    if not self.active:
      return
    self.active = False
    try:
      if outputs is not None:
        jax.block_until_ready(outputs)
    finally:
      jax.profiler.stop_trace()

  def close(self) -> None:
    self.stop()
