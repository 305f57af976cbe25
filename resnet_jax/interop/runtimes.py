"""An exported file run by its own runtime, told by its extension: onnxruntime, the LiteRT
interpreter, or jax (`jax.export.deserialize`)."""

import os
from collections.abc import Callable

import numpy as np

from resnet_jax.interop.artifacts import RUNTIMES, format_of, require


def load_runner(path: str, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 [B, H, W, C] pictures -> float32 logits, by the exported file's own runtime.

  `threads`: the runtime's threads for one call (0: its default).
  """
  name = format_of(path)
  require(RUNTIMES[name], f"running {os.path.basename(path)}")
  if name == "onnx":
    from resnet_jax.interop import onnx_export
    return onnx_export.runner(path, threads)
  if name == "tflite":
    from resnet_jax.interop import litert_export
    return litert_export.runner(path, threads)
  from resnet_jax.interop import stablehlo_export
  return stablehlo_export.runner(path)
