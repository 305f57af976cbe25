r"""A seconds-long CPU smoke run: a one-block-per-stage ResNet of width 8.

  python -m resnet_jax.main --config=configs/tiny.py \
      --config.dataset=fashion_mnist --config.manual_dir=DIR

Not a recipe for accuracy: it checks that the whole pipeline runs.
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config.get_config()
  config.model = "resnet_tiny"
  config.width = 8
  config.batch_size = 64
  config.num_epochs = 1.0
  config.warmup_epochs = 0.1
  config.learning_rate = 0.05
  config.log_every_steps = 10
  return config
