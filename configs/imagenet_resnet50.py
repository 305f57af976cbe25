r"""ResNet-50 on ImageNet: the standard 90-epoch recipe, streamed from disk.

  python -m resnet_jax.main --config=configs/imagenet_resnet50.py \
      --config.manual_dir=/data/imagenet_archives --config.data_workers=16

ResNet-50 with the ImageNet stem at 224 px; Inception-style random-resized
crop (8% to 100% of the area) and flip for training, resize to 256 and centre
crop 224 (fraction 0.875) for eval; SGD with momentum 0.9, batch
1024 at learning rate 0.4 (= 0.1 x batch / 256), 5 warmup epochs then cosine,
90 epochs, weight decay 1e-4 except on BatchNorm and biases, label smoothing
0.1, bf16 compute with float32 parameters, torchvision's normalisation.

TFDS prepares `imagenet2012` once from ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar placed in manual_dir (about 150 GB; preparing needs
TensorFlow); every later run streams it by random access. A folder of images
in the usual layout works too: `--config.dataset=folder:/data/imagenet` with
`train/` and `val/` holding one folder per class, `--config.eval_split=val`.

What is cited, not measured here: no published run uses exactly this recipe.
It is the "efficient training" recipe of He et al., "Bag of Tricks for Image
Classification with Convolutional Neural Networks" (CVPR 2019): batch 1024 at
lr 0.4 (linear scaling), 5 warmup epochs, no weight decay on BatchNorm and
biases, reduced precision; plus two of its refinements, cosine decay and label
smoothing 0.1. The paper reports 76.66% top-1 for ResNet-50-B (this project's
v1.5 architecture, stride in the 3x3) with the efficient recipe and step decay
over 120 epochs, and 78.31% for ResNet-50-D with cosine and label smoothing
added (both from its ablation tables; the figures were not re-checked against
the paper here). Differences from it: 90 epochs (not 120), no zero-gamma
on the last BN of each block (`--config.zero_init_residual=True`
turns it on), bf16 (not fp16), ResNet-50-B (not -D) for the cosine figure.
torchvision's 76.13% for ResNet-50 comes from another recipe (batch 256, lr 0.1
stepped down 10x every 30 epochs, no warmup, no label smoothing, fp32) and is
not this config's reference. On several GPUs or hosts keep `batch_size` global
and the learning rate at 0.1 x batch / 256.
"""

from resnet_jax.config import default_config


def get_config():
  config = default_config.get_config()
  config.dataset = "imagenet2012"
  config.train_split = "train"
  config.eval_split = "validation"
  config.input_pipeline = "stream"
  config.image_size = 224  # Pixels, after the crop.
  config.train_crop = "random_resized"
  config.crop_scale = (0.08, 1.0)
  config.eval_crop_fraction = 0.875  # Resize the shorter side to 256, centre crop 224.
  config.random_flip = True
  # torchvision's ImageNet statistics, in [0, 1] pixel units.
  config.mean = (0.485, 0.456, 0.406)
  config.std = (0.229, 0.224, 0.225)
  config.data_workers = 8

  config.model = "resnet50"
  config.stem = "imagenet"
  config.zero_init_residual = False

  config.batch_size = 1024  # Global.
  config.learning_rate = 0.4  # 0.1 x 1024 / 256.
  config.lr_schedule = "cosine"
  config.warmup_epochs = 5.0
  config.num_epochs = 90.0
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.decay_bn_and_bias = False
  config.label_smoothing = 0.1
  config.half_precision = True
  config.log_every_steps = 100
  return config
