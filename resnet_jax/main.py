r"""Train or evaluate a ResNet.

  python -m resnet_jax.main --config=configs/resnet18.py [--workdir=runs/resnet18]
  python -m resnet_jax.main --workdir=runs/resnet18 --mode=eval

`--config.<field>=<value>` overrides a config field; rerunning on a workdir resumes it.
"""

import os

from absl import flags, logging
from ml_collections import config_flags

from resnet_jax.cli import compile_cache, distributed, runner
from resnet_jax.errors import UserError

flags.DEFINE_string("workdir", None, "Run directory; default runs/<config file stem>.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and resume), or evaluate the best checkpoint.")
flags.DEFINE_bool("quiet", False, "No progress bar and only warnings on the console.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/resnet18.py.",
                                lock_config=True)
FLAGS = flags.FLAGS


def default_workdir() -> str:
  if FLAGS.config is None:
    raise UserError("pass --config=configs/<name>.py to train, or --workdir=DIR with --mode=eval")
  config_file = config_flags.get_config_filename(FLAGS["config"])
  return os.path.join("runs", os.path.splitext(os.path.basename(config_file))[0])


def main(argv: list[str]) -> None:
  runner.no_arguments(argv, "config fields go as --config.FIELD=VALUE")
  if FLAGS.quiet:
    logging.set_verbosity(logging.WARNING)
  import jax
  from resnet_jax.evaluation import evaluator
  from resnet_jax.train import trainer
  compile_cache.enable()  # Before anything compiles: a resumed run loads its steps from it.
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  workdir = FLAGS.workdir or default_workdir()
  logging.info("JAX %s on %d %s device(s), %d process(es); workdir %s", jax.__version__,
               jax.device_count(), jax.default_backend(), jax.process_count(), workdir)
  if FLAGS.mode == "eval":
    # The fields set on the command line (none without --config: nothing to override).
    overridden = config_flags.get_override_values(FLAGS["config"]) if FLAGS.config else {}
    evaluator.evaluate_workdir(workdir, FLAGS.config, overridden)
  elif FLAGS.config is None:
    raise UserError("pass --config=configs/<name>.py to train (see configs/)")
  else:
    trainer.train_and_evaluate(FLAGS.config, workdir, quiet=FLAGS.quiet, print_summary=True)


def run() -> None:
  """The console script `resnet-jax-train`."""
  runner.run(main)


if __name__ == "__main__":
  run()
