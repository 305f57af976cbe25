r"""The PyTorch CIFAR-10 tutorial's recipe, for comparison with it.

  python -m resnet_jax.main --config=configs/tutorial.py

ImageNet-stem ResNet-18 (7x7/2 conv and max-pool on 32x32 images), batch
100, SGD lr 0.1 with momentum 0.9 and weight decay 5e-4 at a constant rate,
10 epochs, normalisation mean = std = 0.5. The ImageNet stem shrinks a
32x32 image to 8x8 before the first block, so this recipe lands well below
the CIFAR-stem one; no figure for it is measured here.
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config.get_config()
  config.model = "resnet18"
  config.stem = "imagenet"
  config.batch_size = 100
  config.learning_rate = 0.1
  config.lr_schedule = "constant"
  config.warmup_epochs = 0.0
  config.num_epochs = 10.0
  config.mean = (0.5, 0.5, 0.5)
  config.std = (0.5, 0.5, 0.5)
  return config
