"""Weights in and out of other frameworks.

torch_files.py: reading .pth/.pt/.bin and .safetensors state_dicts.
architecture.py: which member of the family a state_dict holds.
convert.py: PyTorch state_dicts (torchvision's and timm's layouts) to a checkpoint.
hub.py: published weights by name, downloaded, verified and converted once into a cache.
export.py: a checkpoint back to a torchvision-layout state_dict.
pretrained.py: fitting loaded weights to a new run's model (fine-tuning).

May import `models`, `checkpoints` and `errors`.
"""
