"""Training curves and a confusion matrix as PNG files: `python -m resnet_jax.plot --help`.

The program (flags, output) is `resnet_jax.cli.plot`; what it runs is a library
function, documented there.
"""

from resnet_jax.cli import plot as program, runner


def run() -> None:
  """The console script `resnet-jax-plot`."""
  program.define_flags()
  runner.run(program.main)


if __name__ == "__main__":
  run()
