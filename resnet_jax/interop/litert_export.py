"""LiteRT (TFLite) files: the deployable JAX function through jax2tf into TensorFlow's
TFLite converter, run by the LiteRT interpreter (`ai_edge_litert`).

jax2tf serializes the function as StableHLO inside one XlaCallModule op
(its `native_serialization=False` mode is gone: jax 0.10 accepts the flag,
warns, and serializes natively all the same), and the converter lowers that
StableHLO to TFLite's builtin operators. int8 is the converter's post-training
static quantization with a representative dataset: weights and activations
int8, the uint8 input and float32 output as they are.

The file takes one picture a call ([1, H, W, C]), LiteRT's usual shape: with
a symbolic batch the converter keeps a BROADCAST_TO before every BatchNorm
operation instead of folding them into the convolutions (ResNet-18 width 16
at 28x28 ran 12x slower: 8.9 against 0.65 ms a picture on one core), and a
batch-1 file resized to more pictures fails in XNNPACK for some members (the
model-side resize, SE). `runner` calls it once per picture.
"""

import os
from collections.abc import Callable

import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.interop.artifacts import Deployable

FILE_BATCH = 1  # Pictures per call, as the file declares.


def tflite_bytes(deployable: Deployable, calibration: np.ndarray | None = None) -> bytes:
  """The serialized TFLite model (float32, or int8 when calibration pictures are given)."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  height, width, channels = deployable.contract["input"]["shape"][1:]
  converted = jax2tf.convert(deployable.logits, with_gradient=False)
  function = tf.function(converted, autograph=False, input_signature=[
      tf.TensorSpec([FILE_BATCH, height, width, channels], tf.uint8, name="images")])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [function.get_concrete_function()], function)
  if calibration is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [calibration[i:i + FILE_BATCH]] for i in range(0, len(calibration), FILE_BATCH))
  return converter.convert()


def runner(path: str, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 [B, H, W, C] -> float32 logits [B, classes] by the LiteRT interpreter."""
  from ai_edge_litert.interpreter import Interpreter
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: export it first")
  try:
    interpreter = Interpreter(model_path=path, num_threads=threads or None)
  except (ValueError, RuntimeError) as e:
    raise UserError(f"the LiteRT interpreter cannot load {path} ({str(e).strip()[:300]}): "
                    "export it again") from None
  interpreter.allocate_tensors()
  input_index = interpreter.get_input_details()[0]["index"]
  output_index = interpreter.get_output_details()[0]["index"]

  def logits(images: np.ndarray) -> np.ndarray:
    rows = []
    for picture in np.ascontiguousarray(images, np.uint8):
      interpreter.set_tensor(input_index, picture[None])
      interpreter.invoke()
      rows.append(interpreter.get_tensor(output_index)[0].copy())
    return np.stack(rows)

  return logits
