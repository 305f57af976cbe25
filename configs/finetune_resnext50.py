r"""Fine-tuning ResNeXt-50 (32x4d) from torchvision's ImageNet weights.

  python -m resnet_jax.main --config=configs/finetune_resnext50.py --workdir=runs/rx50_cifar10

The weights (torchvision's IMAGENET1K_V2, resnext50_32x4d-1a0047aa.pth, 25.0M
parameters) are downloaded once into $RESNET_JAX_CACHE (default
~/.cache/resnet_jax), checked against the hash prefix in their name and
converted once. CIFAR's 32x32 images are resized to 128 on device: the
ImageNet stem downsamples by 4 before the first stage. Other members of the
family: `--config.model=wide_resnet50_2
--config.init_checkpoint=torchvision:wide_resnet50_2`, or timm's
`--config.model=resnet50d --config.init_checkpoint=hf-hub:timm/resnet50d.a1_in1k`.
No result is measured for this config yet.
"""

import importlib.util
import os


def get_config():
  # The fine-tuning recipe, loaded by path: configs/ is not a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
  spec = importlib.util.spec_from_file_location("finetune", path)
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  config = base.get_config()
  config.model = "resnext50_32x4d"
  config.stem = "imagenet"
  config.width = 64
  config.image_size = 128  # Pixels, resized on device from the dataset's 32.
  config.init_checkpoint = "torchvision:resnext50_32x4d"
  config.batch_size = 128
  return config
