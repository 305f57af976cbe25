r"""ResNet-18 on CIFAR-10: the standard recipe.

  python -m resnet_jax.main --config=configs/resnet18.py

SGD lr 0.1, momentum 0.9, weight decay 5e-4, 1 warmup epoch then cosine,
random crop (pad 4) and flip, batch 128, 200 epochs. Cited, not measured
here: kuangliu/pytorch-cifar reports 93.0% test accuracy for ResNet-18 and
95.1% for PreAct-ResNet-18 with this recipe. Measured figures for this
project are in README.md and docs/benchmarks.md.
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config.get_config()
  config.model = "resnet18"
  return config
