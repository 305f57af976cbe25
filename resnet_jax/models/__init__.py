"""The networks and what a run keeps of them.

resnet.py: the ResNet family in Flax linen, laid out like torchvision's.
build.py: a model from a resolved config, the TrainState, the loss.
ema.py: the exponential moving average of the weights.
flops.py: FLOPs by formula.

Imports nothing of resnet_jax but `errors`.
"""
