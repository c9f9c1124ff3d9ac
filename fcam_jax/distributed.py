"""Multi-process start-up: `jax.distributed.initialize` from the config or the cluster.

`config.distributed.coordinator_address` (with `num_processes`, `process_id`) starts
a job explicitly, e.g. two processes on one machine:

  python -m fcam_jax.main ... --config.distributed.coordinator_address=localhost:1234 \
      --config.distributed.num_processes=2 --config.distributed.process_id=0   # and =1

Otherwise the cluster's environment is used when it describes more than one process
(SLURM, Open MPI, TPU pods, or JAX_COORDINATOR_ADDRESS): `jax.distributed.initialize()`
reads it. On CPU, cross-process collectives go over gloo.
"""

import os

from absl import logging
import jax


def cluster_environment() -> str:
  """The name of the multi-process environment this process runs in, or ''."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
    return "SLURM"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU pod"
  return ""


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1):
  """Joins the job described by the arguments or the environment; no-op for one process."""
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(
          f"config.distributed: coordinator_address={coordinator_address!r} needs num_processes >= 1 "
          f"and 0 <= process_id < num_processes (got {num_processes}, {process_id})")
    kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id)
  elif cluster_environment():
    kwargs = {}
  else:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d (%s), %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               "config" if coordinator_address else cluster_environment(),
               jax.local_device_count(), jax.device_count())


def initialize_from_config(config):
  d = config.get("distributed")
  if d is not None:
    initialize(d.coordinator_address, d.num_processes, d.process_id)
