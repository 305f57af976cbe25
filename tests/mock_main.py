"""Runs `resnet_jax.main` inside `tfds.testing.mock_data`, as a subprocess would run it.

  python tests/mock_main.py --mock_examples=64 --config=configs/tiny.py ...
"""

import sys

import tensorflow_datasets as tfds

from resnet_jax.cli import runner
from resnet_jax import main

if __name__ == "__main__":
  num_examples = 64
  argv = []
  for arg in sys.argv:
    if arg.startswith("--mock_examples="):
      num_examples = int(arg.split("=", 1)[1])
    else:
      argv.append(arg)
  with tfds.testing.mock_data(num_examples=num_examples):
    runner.run(main.main, argv=argv)
