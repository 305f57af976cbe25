r"""Fine-tuning from a checkpoint: lower peak learning rate, short warmup, few epochs.

  python -m resnet_jax.main --config=configs/finetune.py \
      --config.init_checkpoint=runs/cifar100 --workdir=runs/finetune

`init_checkpoint` is a workdir of ours or the output of `resnet_jax.convert`
(torchvision weights); model, stem and width must match it. The classifier
head is re-initialised when the number of classes differs. Add
`--config.freeze_backbone=True` to train only the head, or
`--config.backbone_lr_scale=0.1` to move the backbone more gently. For
ImageNet weights on 32x32 images, `--config.stem=imagenet
--config.image_size=64` (or 128) resizes on device before the model.
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config.get_config()
  config.model = "resnet18"
  config.init_checkpoint = ""  # Set on the command line; empty trains from scratch.
  config.learning_rate = 0.01
  config.warmup_epochs = 0.2
  config.num_epochs = 5.0
  config.weight_decay = 1e-4
  return config
