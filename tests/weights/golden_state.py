"""Seeded weights and inputs for the backbone golden outputs, from numpy alone.

Shared by `make_golden.py` (which runs torchvision on them, once, to write the golden
files) and `test_golden.py` (which runs fcam_jax on them in CI, without torch). Both must
see bit-identical arrays on any machine and any numpy version, so nothing here uses
numpy's distribution samplers (whose streams numpy does not promise to keep): every
tensor is a counter-based hash, splitmix64(key(name) + i), of its element index i, with
key(name) the FNV-1a hash of its name and the seed, turned into uniform floats with
exact float64 arithmetic and one rounding to float32. A tensor depends only on its
name, shape and the seed, not on the order in which tensors are made.

Values (torchvision layout: conv OIHW, linear (out, in)):

* conv / linear weight: uniform with He variance 2 / fan_in (1 / fan_in for a linear);
* conv / linear bias: uniform in [-0.1, 0.1];
* BatchNorm weight in [0.5, 1.5], bias in [-0.2, 0.2], running_mean in [-0.3, 0.3],
  running_var in [0.5, 2.0] (random: eval-mode BN is not the identity);
  num_batches_tracked 0 (int64);
* input: uniform with unit variance.

Imports numpy and the standard library only.
"""

import hashlib

import numpy as np

SEED = 20220103  # WACV 2022
_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _key(name: str, seed: int) -> int:
  """FNV-1a 64 of the name's UTF-8 bytes, then the seed mixed in."""
  h = 0xCBF29CE484222325
  for byte in name.encode():
    h = ((h ^ byte) * 0x100000001B3) & _MASK
  return (h ^ (seed * 0x9E3779B97F4A7C15)) & _MASK


def uniform(name: str, shape, seed: int = SEED) -> np.ndarray:
  """float64 uniform in [0, 1) with 53 random bits, shape `shape`, keyed by name."""
  n = int(np.prod(shape, dtype=np.int64))
  with np.errstate(over="ignore"):
    z = np.uint64(_key(name, seed)) + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
  return ((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53).reshape(tuple(shape))


def symmetric(name: str, shape, half_width: float, seed: int = SEED) -> np.ndarray:
  """float32 uniform in [-half_width, half_width)."""
  return ((2.0 * uniform(name, shape, seed) - 1.0) * half_width).astype(np.float32)


def interval(name: str, shape, low: float, high: float, seed: int = SEED) -> np.ndarray:
  return (low + (high - low) * uniform(name, shape, seed)).astype(np.float32)


def tensor(name: str, shape, batch_norm: bool, seed: int = SEED) -> np.ndarray:
  """The value of state-dict entry `name` (a torchvision key) of shape `shape`;
  `batch_norm`: whether its module is a BatchNorm (has a running_mean)."""
  shape = tuple(int(s) for s in shape)
  leaf = name.rsplit(".", 1)[-1]
  if leaf == "num_batches_tracked":
    return np.zeros(shape, np.int64)
  if leaf == "running_mean":
    return symmetric(name, shape, 0.3, seed)
  if leaf == "running_var":
    return interval(name, shape, 0.5, 2.0, seed)
  if leaf == "weight" and batch_norm:
    return interval(name, shape, 0.5, 1.5, seed)
  if leaf == "bias" and batch_norm:
    return symmetric(name, shape, 0.2, seed)
  if leaf == "bias":
    return symmetric(name, shape, 0.1, seed)
  if leaf == "weight" and len(shape) in (2, 4):
    fan_in = int(np.prod(shape[1:]))
    gain = 1.0 if len(shape) == 2 else 2.0
    return symmetric(name, shape, np.sqrt(3.0 * gain / fan_in), seed)
  raise ValueError(f"no rule for {name!r} {shape}")


def state_dict(manifest, seed: int = SEED):
  """{name: array} for a manifest [(name, shape), ...] (a torchvision state dict's keys)."""
  bn = {n.rsplit(".", 1)[0] for n, _ in manifest if n.endswith(".running_mean")}
  return {name: tensor(name, shape, name.rsplit(".", 1)[0] in bn, seed)
          for name, shape in manifest}


def model_input(shape, seed: int = SEED) -> np.ndarray:
  """NCHW float32 input, unit variance."""
  return symmetric("input", shape, np.sqrt(3.0), seed)


def projection(tap: str, channels: int, seed: int = SEED) -> np.ndarray:
  """float64 direction over a tap's channels: the golden files keep x . p per pixel."""
  return 2.0 * uniform(f"projection.{tap}", (channels,), seed) - 1.0


def digest(arrays) -> str:
  """sha256 over (name, dtype, shape, bytes) of {name: array}, in sorted name order."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()
