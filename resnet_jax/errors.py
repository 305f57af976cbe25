"""The exceptions that end a run, each with the exit code the command line gives it."""


class UserError(Exception):
  """A problem with the command, config or files, stated with its fix (exit 2).

  Entry points print its message on one line and exit non-zero, without a
  traceback.
  """


class NonFiniteLossError(Exception):
  """The loss (or the parameters) became NaN or Inf; such a state is never saved (exit 3)."""


class Stopped(Exception):
  """A signal stopped the run after saving a checkpoint (exit 143 for SIGTERM, 130 for SIGINT)."""

  def __init__(self, signal_name: str, message: str):
    super().__init__(message)
    self.signal_name = signal_name

  @property
  def exit_code(self) -> int:
    return 143 if self.signal_name == "SIGTERM" else 130
