"""Command-line plumbing shared by every program: flags, console logging, exit codes.

`run(main)` is the one place where an exception becomes an `error:` line and
an exit code:

  2    a user's mistake (`UserError`, bad flags) or a full disk
  3    the loss or the parameters became NaN or Inf
  143  stopped by SIGTERM after saving (130 for SIGINT / Ctrl-C)
  130  also: interrupted without saving (Ctrl-C during start-up, or three times)

Library code raises; it never prints `error:` or calls `sys.exit` itself.
"""

import difflib
import errno
import functools
import logging as std_logging
import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from resnet_jax.train import signals
from resnet_jax.errors import NonFiniteLossError, Stopped, UserError

FLAGS = flags.FLAGS
USER_ERROR, NON_FINITE = 2, 3


# Orbax warnings that say nothing to a user of ours, told by the start of their format string
# (and Orbax's folder). No logger name or level sets them apart from its useful warnings, which
# all go through absl's logger at WARNING, and a function name moves as easily as a message;
# tests/cli/test_runner.py provokes each with the installed Orbax and fails when Orbax rewords
# or drops it.
ORBAX_NOISE = (
    # Listing a checkpoint that a training run prunes as eval or predict reads the workdir.
    "Metadata file does not exist",
    # Every save without an eval: best_fn is set, and only evaluated steps carry accuracy.
    "Requested `tracked_metric`; did not provide metrics",
)
_ORBAX_DIR = f"{os.sep}orbax{os.sep}"


def _orbax_noise(record: std_logging.LogRecord) -> bool:
  return _ORBAX_DIR in record.pathname and str(record.msg).startswith(ORBAX_NOISE)


class OwnInfoOnly(std_logging.Filter):
  """Keeps libraries' INFO chatter (Orbax logs every save) off the console.

  Their warnings and errors pass as one line each, without traceback: when a
  save fails in Orbax's background threads, each thread logs its own stack,
  while the user needs the one `error:` line that the run ends with.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if f"{os.sep}resnet_jax{os.sep}" in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    if signals.aborting:  # Orbax on the save given up: the run's last line says what is kept.
      return False
    if _orbax_noise(record):
      return False
    # Orbax's tasks after a failed save, which the run reports itself (CPython's wording).
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return False
    if record.exc_info or "\n" in str(record.msg):
      first_line = (record.getMessage().strip().splitlines() or [""])[0]
      record.msg, record.args, record.exc_info, record.exc_text = first_line, (), None, None
    return True


def print_error(message: str) -> None:
  """One `error:` line on stderr, after whatever stdout holds."""
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = USER_ERROR) -> None:
  """Prints the one `error:` line and exits; the only exit of every program but success."""
  print_error(message)
  sys.exit(code)


def exit_code_and_message(error: BaseException) -> tuple[int, str | None] | None:
  """The exit code (and `error:` message, if any) for an exception that ends a program."""
  if isinstance(error, UserError):
    return USER_ERROR, str(error)
  if isinstance(error, NonFiniteLossError):
    return NON_FINITE, str(error)
  if isinstance(error, Stopped):
    return error.exit_code, None  # The run logged where it saved.
  if isinstance(error, KeyboardInterrupt):  # The trainer's abort says what it kept.
    return 130, (str(error) or "interrupted before anything was saved; rerun the same command "
                 "to resume")
  if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
    return USER_ERROR, (f"{error.strerror} writing {error.filename}: free disk space, then rerun "
                        "the same command to resume from the latest checkpoint")
  return None


def _guarded(main: Callable[[list[str]], int | None], argv: list[str]) -> None:
  # On the handler, not the logger: asyncio's records reach it too.
  logging.get_absl_handler().addFilter(OwnInfoOnly())
  try:
    code = main(argv)
  except BaseException as e:  # pylint: disable=broad-except
    known = exit_code_and_message(e)
    if known is None:
      raise
    code, message = known
    if message is None:
      sys.exit(code)
    if isinstance(e, signals.Aborted):
      # Without waiting for the threads of a save given up (Orbax's
      # writers), which a normal exit would join, taking as long as the save.
      print_error(message)
      sys.stderr.flush()
      os._exit(code)
    fail(message, code)
  sys.exit(code or 0)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> None:
  """Parses flags and runs main(argv), turning the exceptions above into exit codes."""
  app.run(functools.partial(_guarded, main), argv=argv, flags_parser=parse_flags)


def quiet_libraries(quiet: bool) -> None:
  """Warnings only on the console for programs that are not long runs (Orbax logs each save)."""
  if quiet or not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def no_arguments(argv: Sequence[str], hint: str) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {' '.join(argv[1:])}: {hint}")


# Flags -------------------------------------------------------------------------


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported in one line."""
  try:
    remaining = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    fail(flag_error_message(e, argv))
  except SyntaxError as e:  # In the config file.
    fail(f"{e.filename} line {e.lineno}: {e.msg}: fix the config file")
  if "config" in FLAGS:
    try:
      # ml_collections reports a config file it could not load only on first use.
      _ = FLAGS.config is not None and FLAGS.config.keys()
    except OSError as e:
      from ml_collections import config_flags
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      fail(f"config file {config_flags.get_config_filename(FLAGS['config'])} cannot be loaded "
           f"({lines[-1]}): pass --config=configs/<name>.py (see configs/)")
  return remaining


def flag_error_message(error: Exception, argv: Sequence[str]) -> str:
  """What was wrong with the command line, and the fix."""
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an unknown config field.
    found = re.search(r"'([^'\\]+)", str(error))
    name = found.group(1) if found else str(error)
    arg = next((a for a in argv if a.startswith("--config.") and name in a), name)
    from resnet_jax.config import default_config
    close = difflib.get_close_matches(name, list(default_config.get_config().keys()), n=1)
    hint = f"did you mean --config.{close[0]}? " if close else ""
    return (f"unknown config field {name!r} in {arg}: {hint}every field is listed in "
            "resnet_jax/config/default_config.py")
  message = str(error).strip().splitlines()[0]
  if match := re.match(r"flag --config\.([\w.]+)=", message):
    try:
      kind = type(FLAGS["config"].value[match.group(1)]).__name__
    except Exception:  # The config is not loaded yet: say it without the type.
      kind = "its type"
    return f"{message}: give --config.{match.group(1)} a value of {kind}"
  return f"{message}: see --helpshort"
