"""Data parallelism with pmap semantics: per-device steps over the named axis 'batch'.

The step functions are written once, per device, with named-axis collectives
(`lax.pmean(grads, 'batch')`, SyncBN over 'batch'). `DataParallel` runs them on
every device of every process in one of two ways (`config.parallel`):

* `pmap`: `jax.pmap`; arrays carry a leading local-device axis.
* `jit`: `jax.jit` of `jax.shard_map` over a 1-D mesh of all devices, batch sharded,
  parameters replicated; arrays are global `jax.Array`s without a device axis.

Both give the same numbers (tests/test_parallel.py). `shard_map` runs with
`check_vma=False`: under the default varying-axis checks, gradients of replicated
inputs taken inside the body come out already summed over the axis, and the
steps' own `pmean` would count them twice.
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

AXIS = "batch"
BACKENDS = ("pmap", "jit")
# XLA:CPU routes convolutions through YNNPACK fusions by default; XLA's own are faster
# for these models on the CPUs measured (benchmarks/README.md, "YNNPACK").
NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(cpu_ynnpack: bool = False) -> Dict[str, str]:
  """XLA options for the steps: without YNNPACK fusions on CPU unless `cpu_ynnpack`."""
  return {} if cpu_ynnpack or jax.default_backend() != "cpu" else dict(NO_YNNPACK)


def with_options(fn: Callable, options: Optional[Dict[str, str]]) -> Callable:
  """A jitted or pmapped `fn` compiled with XLA `options` (pmap takes none itself):
  lowered and compiled once per argument signature, like jit's own cache."""
  if not options:
    return fn
  cache = {}

  @functools.wraps(fn)
  def call(*args):
    leaves, tree = jax.tree.flatten(args)
    key = (tree, tuple((np.shape(x), getattr(x, "dtype", type(x)),
                        getattr(x, "weak_type", False), getattr(x, "sharding", None))
                       for x in leaves))
    if key not in cache:
      cache[key] = fn.lower(*args).compile(compiler_options=options)
    return cache[key](*args)
  return call


def _local_sharding() -> NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: Any) -> Any:
  """pmap layout: copies a pytree onto every local device (leading axis = device)."""
  n, sharding = jax.local_device_count(), _local_sharding()
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding), tree)


def unreplicate(tree: Any) -> Any:
  """pmap layout: the first local device's copy, on the host.

  Read from the device's buffer, not by indexing: `x[0]` would be a computation over
  all devices, and in a multi-process job every process would have to run it in step.
  """
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def shard(batch: Any) -> Any:
  """pmap layout: (local_batch, ...) -> (local_devices, local_batch / devices, ...) on device."""
  n, sharding = jax.local_device_count(), _local_sharding()

  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"a batch of {x.shape[0]} does not split over {n} local devices")
    return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]), sharding)
  return jax.tree.map(split, batch)


def unshard(tree: Any) -> Any:
  """pmap layout: (devices, per_device, ...) -> (devices * per_device, ...) numpy."""
  return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), tree)


class DataParallel:
  """Compiles per-device steps for all devices and moves data to and from them.

  `step(fn, replicated, sharded)` compiles `fn(*args)` where each arg is either
  replicated (the same on every device: state, frozen variables) or sharded along
  the batch (the batch; per-device keys). Its outputs must be replicated (the state,
  pmean'ed metrics). `per_example(fn, ...)` is the same for per-example outputs.
  """

  def __init__(self, kind: str = "pmap", options: Optional[Dict[str, str]] = None):
    """`options`: XLA compiler options for every step (see `compiler_options`)."""
    if kind not in BACKENDS:
      raise ValueError(f"parallel backend {kind!r}: must be one of {', '.join(BACKENDS)}")
    self.kind = kind
    self.options = dict(options or {})
    if kind == "jit":
      self.mesh = jax.sharding.Mesh(np.array(jax.devices()), (AXIS,))
      self._replicated = NamedSharding(self.mesh, P())
      self._sharded = NamedSharding(self.mesh, P(AXIS))

  def _compile(self, fn: Callable, specs: Sequence[bool], out_sharded: bool, donate):
    if self.kind == "pmap":
      # An AOT-compiled pmap of several processes expects global shapes but is called
      # with this process's arrays: there, XLA's default options.
      options = self.options if jax.process_count() == 1 else None
      return with_options(jax.pmap(fn, axis_name=AXIS, donate_argnums=donate), options)
    squeeze = [i for i, s in enumerate(specs) if s == "key"]

    def body(*args):  # per-device keys arrive as a block of one
      args = [a[0] if i in squeeze else a for i, a in enumerate(args)]
      return fn(*args)
    in_specs = tuple(P(AXIS) if s else P() for s in specs)
    mapped = jax.shard_map(body, mesh=self.mesh, in_specs=in_specs,
                           out_specs=P(AXIS) if out_sharded else P(), check_vma=False)
    return functools.wraps(fn)(jax.jit(mapped, donate_argnums=donate,
                                       compiler_options=self.options or None))

  def step(self, fn: Callable, specs: Sequence, donate=(0,)) -> Callable:
    """`specs[i]`: False = replicated arg, True = batch-sharded, 'key' = one key per device."""
    return self._compile(fn, specs, out_sharded=False, donate=donate)

  def per_example(self, fn: Callable, specs: Sequence) -> Callable:
    """Like `step`, for functions whose outputs are per example (sharded like the batch)."""
    return self._compile(fn, specs, out_sharded=True, donate=())

  def replicate(self, tree: Any) -> Any:
    if self.kind == "pmap":
      return replicate(tree)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), self._replicated, lambda idx, x=np.asarray(x): x[idx]), tree)

  def unreplicate(self, tree: Any) -> Any:
    """The state on the host (numpy), from any process."""
    if self.kind == "pmap":
      return unreplicate(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def shard(self, batch: Any) -> Any:
    """This process's part of the global batch -> device arrays."""
    if self.kind == "pmap":
      return shard(batch)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._sharded, np.asarray(x)), batch)

  def unshard(self, tree: Any) -> Any:
    """Per-example outputs -> numpy, this process's examples in batch order."""
    if self.kind == "pmap":
      return unshard(tree)

    def local(x):
      shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      return np.concatenate([np.asarray(s.data) for s in shards])
    return jax.tree.map(local, tree)

  def keys(self, rng: jax.Array) -> jax.Array:
    """One key per device (the ones on this process for pmap, all for jit)."""
    if self.kind == "pmap":
      return jax.random.split(rng, jax.local_device_count())
    keys = jax.random.split(rng, jax.device_count())
    return jax.make_array_from_callback(keys.shape, self._sharded, lambda idx: keys[idx])

  def first(self, tree: Any) -> Any:
    """Host values of replicated step outputs (pmean'ed metrics)."""
    if self.kind == "pmap":
      return unreplicate(tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
