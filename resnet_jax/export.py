"""A resnet_jax checkpoint to a PyTorch state_dict in torchvision's layout: `python -m resnet_jax.export --help`.

The program's flags and output are in `resnet_jax.cli.export`.
"""

if __name__ == "__main__":
  from resnet_jax.cli import export
  export.run()
