"""A resnet_jax checkpoint to a PyTorch state_dict in torchvision's layout: `python -m resnet_jax.export --help`.

The program (flags, output) is `resnet_jax.cli.export`; what it runs is a library
function, documented there.
"""

from resnet_jax.cli import export as program, runner


def run() -> None:
  """The console script `resnet-jax-export`."""
  program.define_flags()
  runner.run(program.main)


if __name__ == "__main__":
  run()
