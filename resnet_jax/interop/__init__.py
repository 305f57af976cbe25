"""Weights in and out of other frameworks.

torch_files.py: reading .pth/.pt/.bin and .safetensors state_dicts.
architecture.py: which member of the family a state_dict holds.
convert.py: PyTorch state_dicts (torchvision's and timm's layouts) to a checkpoint.
hub.py: published weights by name, downloaded, verified and converted once into a cache.
export.py: a checkpoint back to a torchvision-layout state_dict.
artifacts.py: the deployment formats, their toolchains, a file and its contract written whole.
runtimes.py: an exported file run by its own runtime.
torch_resnet.py: the family as PyTorch modules of any width, in torchvision's and timm's layout.
onnx_export.py: ONNX through PyTorch's exporter, run by onnxruntime; quantize.py: its int8.
litert_export.py: LiteRT (TFLite) through jax2tf and TensorFlow's converter, float32 or int8.
stablehlo_export.py: StableHLO through jax.export, run with jax alone.
pretrained.py: fitting loaded weights to a new run's model (fine-tuning).

May import `models`, `checkpoints` and `errors`.
"""
