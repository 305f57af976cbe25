"""Post-training static int8 quantization of an exported ONNX model, by onnxruntime's own tool.

`onnxruntime.quantization.quant_pre_process` first (shape inference and
onnxruntime's graph optimisation, which folds each BatchNorm into its
convolution), then `quantize_static` in QDQ format: weights int8 per output
channel, activations uint8 with MinMax ranges observed on the calibration
pictures, which the caller reads from the run's training split framed as
evaluation frames it. The input stays uint8 pictures and the output float32
logits: the contract does not change.
"""

import os
import tempfile

import numpy as np

from resnet_jax.interop import onnx_export

CALIBRATION_BATCH = 32  # Pictures per calibration run: the ranges do not depend on it.


class _Pictures:
  """onnxruntime's CalibrationDataReader over uint8 [N, H, W, C] pictures, a batch at a time."""

  def __init__(self, pictures: np.ndarray):
    self.pictures, self.start = pictures, 0

  def get_next(self) -> dict | None:
    if self.start >= len(self.pictures):
      return None
    batch = self.pictures[self.start:self.start + CALIBRATION_BATCH]
    self.start += CALIBRATION_BATCH
    return {onnx_export.INPUT: np.ascontiguousarray(batch, np.uint8)}

  def rewind(self) -> None:
    self.start = 0


def quantize_int8(model: bytes, pictures: np.ndarray) -> bytes:
  """The int8 model of a float32 ONNX model, calibrated on uint8 pictures [N, H, W, C]."""
  from onnxruntime import quantization as q
  from onnxruntime.quantization.shape_inference import quant_pre_process
  reader = type("Pictures", (_Pictures, q.CalibrationDataReader), {})(pictures)
  with tempfile.TemporaryDirectory(prefix="resnet_jax_int8_") as work:
    paths = {name: os.path.join(work, f"{name}.onnx") for name in ("float", "prepared", "int8")}
    with open(paths["float"], "wb") as f:
      f.write(model)
    quant_pre_process(paths["float"], paths["prepared"], skip_symbolic_shape=True)
    q.quantize_static(paths["prepared"], paths["int8"], reader, quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax,
                      extra_options={"CalibTensorRangeSymmetric": False})
    with open(paths["int8"], "rb") as f:
      return f.read()
