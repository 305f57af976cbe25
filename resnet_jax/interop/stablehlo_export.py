"""StableHLO through `jax.export`: the deployable JAX function, weights inside, serialized with a
symbolic batch dimension; `jax.export.deserialize(...).call(x)` runs it with jax alone.

  import jax, numpy as np
  exported = jax.export.deserialize(bytearray(open("model.stablehlo", "rb").read()))
  logits = exported.call(np.zeros((8, 28, 28, 1), np.uint8))  # uint8 NHWC, framed

Lowered for CPU and CUDA, so the one file runs on either.
"""

import os
from collections.abc import Callable

import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.interop.artifacts import Deployable

PLATFORMS = ("cpu", "cuda")


def stablehlo_bytes(deployable: Deployable) -> bytes:
  """The serialized `jax.export.Exported` of uint8 [b, H, W, C] pictures -> float32 logits."""
  import jax
  import jax.numpy as jnp
  height, width, channels = deployable.contract["input"]["shape"][1:]
  batch = jax.export.symbolic_shape("b")[0]
  exported = jax.export.export(jax.jit(deployable.logits), platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8))
  return bytes(exported.serialize())


def runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 [B, H, W, C] -> float32 logits [B, classes], by jax on this machine's backend."""
  import jax
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: export it first")
  with open(path, "rb") as f:
    data = f.read()
  try:
    exported = jax.export.deserialize(bytearray(data))
  except Exception as e:  # A flatbuffer that is not an Exported fails in several ways.
    raise UserError(f"jax.export cannot read {path} ({type(e).__name__}): export it "
                    "again") from None
  call = jax.jit(exported.call)
  return lambda images: np.asarray(call(np.ascontiguousarray(images, np.uint8)))
