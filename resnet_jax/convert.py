"""PyTorch ResNet weights (torchvision's or timm's layout) to a resnet_jax checkpoint: `python -m resnet_jax.convert --help`.

The program's flags and output are in `resnet_jax.cli.convert`.
"""

if __name__ == "__main__":
  from resnet_jax.cli import convert
  convert.run()
