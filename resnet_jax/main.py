r"""Train or evaluate a ResNet.

  python -m resnet_jax.main --config=configs/resnet18.py [--workdir=runs/resnet18]
  python -m resnet_jax.main --workdir=runs/resnet18 --mode=eval

`--config.<field>=<value>` overrides any config field. Rerunning a training
command on an existing workdir resumes from its latest checkpoint.
"""

import difflib
import errno
import logging as std_logging
import os
import re
import sys
import warnings

from absl import app, flags, logging
from ml_collections import config_flags

flags.DEFINE_string("workdir", None, "Run directory; default runs/<config file stem>.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and resume), or evaluate the best checkpoint.")
flags.DEFINE_bool("quiet", False, "No progress bar and only warnings on the console.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/resnet18.py.",
                                lock_config=True)
FLAGS = flags.FLAGS



def cluster_launch() -> str | None:
  """The cluster system that started several processes of this job, if any."""
  for variable, name in (("SLURM_NTASKS", "SLURM"), ("OMPI_COMM_WORLD_SIZE", "Open MPI")):
    if int(os.environ.get(variable, "1")) > 1:
      return name
  return None


# jax.distributed's defaults (a peer is dead after 100 s without heartbeat; survivors
# then wait up to 300 s at exit) leave a cluster's other nodes idle for minutes when
# one crashes. The heartbeat thread is independent of Python, so 30 s of silence
# means a dead or frozen host, not a slow step; a normal run's processes end within
# seconds of each other. Joining waits longer: nodes of one job start unevenly.
JOIN_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 60


def initialize_distributed() -> None:
  """Joins a multi-process run when flags or the cluster environment ask for one."""
  import jax
  from resnet_jax.errors import UserError
  cluster = cluster_launch()
  explicit = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if not cluster and any(v is not None for v in explicit) and None in explicit:
    raise UserError("a multi-process run needs all of --coordinator_address=HOST:PORT (of "
                    "process 0), --num_processes and --process_id (0 to num_processes - 1)")
  if not cluster and FLAGS.coordinator_address is None:
    return
  if cluster:
    logging.info("%s launch detected: initialising jax.distributed", cluster)
  # CPU processes exchange arrays through gloo, jax's default CPU collectives.
  try:
    jax.distributed.initialize(*explicit, initialization_timeout=JOIN_TIMEOUT_S,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
  except (ValueError, jax.errors.JaxRuntimeError) as e:
    raise UserError(f"could not join the multi-process run ({str(e).strip().splitlines()[0]}): "
                    f"start every process within {JOIN_TIMEOUT_S} s, with the same "
                    "--coordinator_address and --num_processes and distinct --process_id "
                    "values") from None


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
    if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
      return False  # Orbax's tasks after a failed save, which the run reports itself.
    if record.exc_info or "\n" in str(record.msg):
      first_line = (record.getMessage().strip().splitlines() or [""])[0]
      record.msg, record.args, record.exc_info, record.exc_text = first_line, (), None, None
    return True


def quiet_unraisable(unraisable) -> None:
  """Hides tensorstore's callbacks into the event loop of a save that Orbax gave up on."""
  if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
      unraisable.exc_value):
    return
  sys.__unraisablehook__(unraisable)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config override reported in one line."""
  try:
    remaining = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    print(f"error: {flag_error_message(e, argv)}", file=sys.stderr)
    sys.exit(2)
  except SyntaxError as e:  # In the config file.
    print(f"error: {e.filename} line {e.lineno}: {e.msg}: fix the config file", file=sys.stderr)
    sys.exit(2)
  try:
    # ml_collections reports a config file it could not load only on first use.
    _ = FLAGS.config is not None and FLAGS.config.keys()
  except OSError as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    print(f"error: config file {FLAGS['config'].config_filename} cannot be loaded ({lines[-1]}): "
          "pass --config=configs/<name>.py (see configs/)", file=sys.stderr)
    sys.exit(2)
  return remaining


def flag_error_message(error: Exception, argv: list[str]) -> str:
  """What was wrong with the command line, and the fix."""
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an unknown config field.
    found = re.search(r"'([^'\\]+)", str(error))
    name = found.group(1) if found else str(error)
    arg = next((a for a in argv if a.startswith("--config.") and name in a), name)
    from resnet_jax import default_config
    close = difflib.get_close_matches(name, list(default_config.get_config().keys()), n=1)
    hint = f"did you mean --config.{close[0]}? " if close else ""
    return (f"unknown config field {name!r} in {arg}: {hint}every field is listed in "
            "resnet_jax/default_config.py")
  message = str(error).strip().splitlines()[0]
  if match := re.match(r"flag --config\.([\w.]+)=", message):
    try:
      kind = type(FLAGS["config"].value[match.group(1)]).__name__
    except Exception:  # The config is not loaded yet: say it without the type.
      kind = "its type"
    return f"{message}: give --config.{match.group(1)} a value of {kind}"
  return f"{message}: see --helpshort"


def main(argv):
  # On the handler, not the logger: asyncio's records reach it too.
  logging.get_absl_handler().addFilter(OwnInfoOnly())
  # After a failed save, Orbax leaves tasks that complain at exit; the run has said what failed.
  sys.unraisablehook = quiet_unraisable
  warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}: config fields go as --config.FIELD=VALUE")
  if FLAGS.quiet:
    logging.set_verbosity(logging.WARNING)
  from resnet_jax.errors import UserError
  try:
    run()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    print(f"error: {e.strerror} writing {e.filename}: free disk space, then rerun the same "
          "command to resume from the latest checkpoint", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  import jax
  from resnet_jax import evaluate, trainer
  from resnet_jax.errors import UserError

  initialize_distributed()
  config = FLAGS.config
  workdir = FLAGS.workdir
  if workdir is None:
    if config is None:
      raise UserError("pass --config=configs/<name>.py to train, or --workdir=DIR with --mode=eval")
    stem = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = os.path.join("runs", stem)
  logging.info("JAX %s on %d %s device(s), %d process(es); workdir %s", jax.__version__,
               jax.device_count(), jax.default_backend(), jax.process_count(), workdir)
  if FLAGS.mode == "eval":
    evaluate.evaluate(workdir, config)
    return
  if config is None:
    raise UserError("pass --config=configs/<name>.py to train (see configs/)")
  try:
    result = trainer.train_and_evaluate(config, workdir, quiet=FLAGS.quiet)
  except trainer.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  if jax.process_index() == 0:
    print(trainer.final_summary(workdir, result))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
