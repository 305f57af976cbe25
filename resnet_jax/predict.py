"""Classify images, or folders of them, with a trained or converted checkpoint: `python -m resnet_jax.predict --help`.

The program (flags, output) is `resnet_jax.cli.predict`; what it runs is a library
function, documented there.
"""

from resnet_jax.cli import predict as program, runner


def run() -> None:
  """The console script `resnet-jax-predict`."""
  program.define_flags()
  runner.run(program.main)


if __name__ == "__main__":
  run()
