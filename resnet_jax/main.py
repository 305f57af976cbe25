r"""Train or evaluate a ResNet.

  python -m resnet_jax.main --config=configs/resnet18.py [--workdir=runs/resnet18]
  python -m resnet_jax.main --workdir=runs/resnet18 --mode=eval

`--config.<field>=<value>` overrides any config field. Rerunning a training
command on an existing workdir resumes from its latest checkpoint.
"""

import logging as std_logging
import os
import sys

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


def initialize_distributed() -> None:
  """Joins a multi-process run when flags or the cluster environment ask for one."""
  import jax
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, initialization_timeout=300)
  elif cluster := cluster_launch():
    logging.info("%s launch detected: initialising jax.distributed", cluster)
    jax.distributed.initialize(initialization_timeout=300)


class OwnInfoOnly(std_logging.Filter):
  """Keeps libraries' INFO chatter (Orbax logs every save) off the console; warnings pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or f"{os.sep}resnet_jax{os.sep}" in record.pathname


def main(argv):
  std_logging.getLogger("absl").addFilter(OwnInfoOnly())
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
  app.run(main)
