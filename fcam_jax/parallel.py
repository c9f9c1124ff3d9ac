"""Data parallelism with pmap semantics: per-device steps over the named axis 'batch'.

Arrays handed to the pmapped steps have a leading local-device axis. They are put
on the devices once, sharded along that axis (the layout pmap itself produces),
so passing replicated parameters to every step costs no transfer.
"""

from typing import Any

import jax
import numpy as np

AXIS = "batch"


def _device_sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
  """Copies a pytree onto every local device (leading axis = device)."""
  n, sharding = jax.local_device_count(), _device_sharding()
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy, on the host."""
  return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def shard(batch: Any) -> Any:
  """(local_batch, ...) host arrays -> device arrays (local_devices, local_batch / devices, ...)."""
  n, sharding = jax.local_device_count(), _device_sharding()

  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"a batch of {x.shape[0]} does not split over {n} local devices")
    return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]), sharding)
  return jax.tree.map(split, batch)


def unshard(tree: Any) -> Any:
  """(devices, per_device, ...) device arrays -> (devices * per_device, ...) numpy."""
  return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)
