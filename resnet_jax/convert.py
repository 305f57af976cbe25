"""PyTorch ResNet weights (torchvision's or timm's layout) to a resnet_jax checkpoint: `python -m resnet_jax.convert --help`.

The program (flags, output) is `resnet_jax.cli.convert`; what it runs is a library
function, documented there.
"""

from resnet_jax.cli import convert as program, runner


def run() -> None:
  """The console script `resnet-jax-convert`."""
  program.define_flags()
  runner.run(program.main)


if __name__ == "__main__":
  run()
