"""`python -m resnet_jax.plot`: training curves and a confusion matrix from workdirs, and a
reliability diagram from an eval.json (flags)."""

from collections.abc import Sequence

from absl import flags

from resnet_jax.cli import runner
from resnet_jax.reporting import plots


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so importing adds none."""
  flags.DEFINE_multi_string("workdir", None, "Run directory; repeat to compare runs.")
  flags.DEFINE_string("output", None, "PNG for the loss, accuracy and learning-rate curves.")
  flags.DEFINE_string("confusion", None, "PNG for the first workdir's confusion matrix (eval.json).")
  flags.DEFINE_list("labels", None, "Comma-separated legend names, one per --workdir.")
  flags.DEFINE_bool("normalize", False, "Row fractions instead of counts in confusion-matrix cells.")
  flags.DEFINE_string("calibration", None, "eval.json (or a workdir holding one) whose "
                      "reliability diagram to draw.")
  flags.DEFINE_string("calibration_output", None, "PNG for the reliability diagram; default "
                      "calibration.png beside the eval.json.")


def main(argv: Sequence[str]) -> None:
  runner.no_arguments(argv, "every input is a --flag")
  options = flags.FLAGS
  plots.plot(options.workdir, options.output, options.confusion, options.labels, options.normalize,
             options.calibration, options.calibration_output)


def run() -> None:
  """`python -m resnet_jax.plot` and the console script `resnet-jax-plot`."""
  define_flags()
  runner.run(main)
