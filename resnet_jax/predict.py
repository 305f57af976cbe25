"""Classify images, or folders of them, with a trained or converted checkpoint: `python -m resnet_jax.predict --help`.

The program's flags and output are in `resnet_jax.cli.predict`.
"""

if __name__ == "__main__":
  from resnet_jax.cli import predict
  predict.run()
