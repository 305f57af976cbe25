"""Joining a multi-process run: explicit flags, or what SLURM and Open MPI set."""

import os

from absl import logging

from resnet_jax.errors import UserError

# jax.distributed's defaults (a peer is dead after 100 s without heartbeat; survivors
# then wait up to 300 s at exit) leave a cluster's other nodes idle for minutes when
# one crashes. The heartbeat thread is independent of Python, so 30 s of silence
# means a dead or frozen host, not a slow step; a normal run's processes end within
# seconds of each other. Joining waits longer: nodes of one job start unevenly.
JOIN_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 60


def cluster_launch() -> str | None:
  """The cluster system that started several processes of this job, if any."""
  for variable, name in (("SLURM_NTASKS", "SLURM"), ("OMPI_COMM_WORLD_SIZE", "Open MPI")):
    if int(os.environ.get(variable, "1")) > 1:
      return name
  return None


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  """Joins a multi-process run when the arguments or the cluster environment ask for one."""
  import jax
  cluster = cluster_launch()
  explicit = (coordinator_address, num_processes, process_id)
  if not cluster and any(v is not None for v in explicit) and None in explicit:
    raise UserError("a multi-process run needs all of --coordinator_address=HOST:PORT (of "
                    "process 0), --num_processes and --process_id (0 to num_processes - 1)")
  if not cluster and coordinator_address is None:
    return
  if cluster:
    logging.info("%s launch detected: initialising jax.distributed", cluster)
  # CPU processes exchange arrays through gloo, jax's default CPU collectives.
  try:
    jax.distributed.initialize(*explicit, initialization_timeout=JOIN_TIMEOUT_S,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
  except (ValueError, jax.errors.JaxRuntimeError) as e:
    raise UserError(f"could not join the multi-process run ({str(e).strip().splitlines()[0]}): "
                    f"start every process within {JOIN_TIMEOUT_S} s, with the same "
                    "--coordinator_address and --num_processes and distinct --process_id "
                    "values") from None
