"""Training curves and a confusion matrix as PNG files: `python -m resnet_jax.plot --help`.

The program's flags and output are in `resnet_jax.cli.plot`.
"""

if __name__ == "__main__":
  from resnet_jax.cli import plot
  plot.run()
