"""Weights in and out of other frameworks.

convert.py: PyTorch state_dicts (torchvision's and timm's layouts) to a checkpoint.
export.py: a checkpoint back to a torchvision-layout state_dict.
pretrained.py: fitting loaded weights to a new run's model (fine-tuning).

May import `models`, `checkpoints` and `errors`.
"""
