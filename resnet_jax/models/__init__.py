"""The networks and what a run keeps of them.

resnet.py: the ResNet family (ResNet, ResNeXt, Wide ResNet, ResNet-D, SE) in Flax linen,
  laid out like torchvision's and timm's.
zoo.py: published weights by name (torchvision's files, Hugging Face hub repositories).
build.py: a model from a resolved config, the TrainState, the loss.
ema.py: the exponential moving average of the weights.
flops.py: FLOPs by formula.

Imports nothing of resnet_jax but `errors`.
"""
