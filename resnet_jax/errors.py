"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
  """A problem with the command, config or files, stated with its fix.

  Entry points print its message on one line and exit non-zero, without a
  traceback.
  """
