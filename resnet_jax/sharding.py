"""The device mesh and the two shardings a data-parallel run uses: replicated, and split by batch.

One axis, `data`, over every device of every host. Parameters are
replicated, batches are split along their first axis. The same code runs on
one CPU, eight GPUs and several hosts.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh() -> Mesh:
  """A one-axis mesh of every device (all hosts), for data parallelism."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places a host array that every process holds in full on every device.

  Each process fills only its own devices (the callback is asked for their
  shards), so with several processes each passes its own copy.
  """
  return jax.make_array_from_callback(array.shape, replicated(mesh), lambda index: array[index])
