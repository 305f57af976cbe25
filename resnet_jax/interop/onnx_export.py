"""ONNX through PyTorch: the checkpoint's torchvision-layout state_dict in `torch_resnet`'s
modules, traced by `torch.onnx.export` (the torch.export-based exporter, PyTorch's default),
and run by onnxruntime.

Why this path: PyTorch's exporter is the one the field's ResNets go through
(timm's `onnx_export`, torchvision); resnet_jax's weights map to torchvision's
layout one to one (`export.to_torch_state_dict`). jax2onnx pins
orbax-checkpoint below the version resnet_jax needs, and tf2onnx cannot read
what jax2tf writes now (one XlaCallModule op). The graph takes uint8 NHWC
pictures, as the other formats do: `augment.preprocess` is in it.
"""

import os
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.interop import export
from resnet_jax.interop.artifacts import Deployable

INPUT, OUTPUT = "images", "logits"
# Opset 18: what PyTorch's exporter writes by default, and what onnxruntime's quantizer takes.
OPSET = 18


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in]: jax.image.resize's bilinear resize of one axis, as a matrix.

  The same weights as `augment.preprocess` applies (half-pixel centres,
  antialiased when shrinking), read off the resize of an identity matrix.
  """
  identity = jnp.eye(size_in, dtype=jnp.float32)
  return np.asarray(jax.image.resize(identity, (size_out, size_in), "bilinear"))


def torch_module(deployable: Deployable):
  """The PyTorch module of uint8 NHWC pictures to logits, holding the checkpoint's weights."""
  from resnet_jax.interop import torch_resnet  # Imports PyTorch.
  state_dict, arch = export.to_torch_state_dict(deployable.variables, deployable.config)
  network = torch_resnet.load_network(state_dict, arch)
  height, width, _ = deployable.contract["input"]["shape"][1:]
  inside = deployable.contract["in_the_model"]
  side = inside["resize_to"]  # None where augment.preprocess does not resize.
  resize = {}
  if side:
    resize = {"resize_h": resize_matrix(height, side), "resize_w": resize_matrix(width, side)}
  return torch_resnet.Deployed(network, inside["mean"], inside["std"], **resize).eval()


def onnx_bytes(deployable: Deployable) -> bytes:
  """The serialized ONNX model: input `images` uint8 [batch, H, W, C], output `logits`."""
  import onnx
  import torch
  module = torch_module(deployable)
  height, width, channels = deployable.contract["input"]["shape"][1:]
  example = torch.zeros((2, height, width, channels), dtype=torch.uint8)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # The exporter's notes on its own internals.
    program = torch.onnx.export(
        module, (example,), input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
  model = program.model_proto
  model.doc_string = "resnet_jax: uint8 NHWC pictures in, logits out; see the .json beside it"
  onnx.checker.check_model(model, full_check=True)
  return model.SerializeToString()


def session(path_or_bytes: "str | bytes", threads: int = 0):
  """An onnxruntime CPU session, `threads` per operator (0: onnxruntime's default)."""
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1  # One branch at a time: a ResNet's graph is a chain.
  options.log_severity_level = 3  # Errors only: shape-inference notes are not for users.
  try:
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # onnxruntime raises its own Fail, InvalidGraph, ... for a bad file.
    name = path_or_bytes if isinstance(path_or_bytes, str) else "the model"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    raise UserError(f"onnxruntime cannot load {name} ({first}): export it again") from None


def runner(path: str, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 [B, H, W, C] -> float32 logits [B, classes] by onnxruntime."""
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: export it first")
  run = session(path, threads)
  return lambda images: run.run([OUTPUT], {INPUT: np.ascontiguousarray(images, np.uint8)})[0]

