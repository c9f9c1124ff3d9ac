"""Shared by the benchmarks: interleaved timing, medians with their spread, the torch check."""

import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence


def require_torch(script: str):
  """Exits with one line if torch / torchvision (the optional `torch` extra) are missing."""
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    sys.exit(f"error: {script} needs torch and torchvision for its PyTorch reference "
             f"(pip install -e '.[torch]'): {e}")


def interleave(fns: Dict[str, Callable[[], None]], rounds: int) -> Dict[str, List[float]]:
  """Seconds per call of each fn, called in turn (a, b, c, a, b, c, ...) `rounds` times,
  so that load changes on a shared machine hit every fn alike."""
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def median(xs: Sequence[float]) -> float:
  return statistics.median(xs)


def spread(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
  return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}"


def ratios(num: Sequence[float], den: Sequence[float]) -> List[float]:
  """Per-round ratios num[i] / den[i] (the same round: the same load)."""
  return [a / b for a, b in zip(num, den)]


def load() -> str:
  return "load average {:.1f} / {:.1f} / {:.1f} (1/5/15 min), {} CPUs".format(
      *os.getloadavg(), os.cpu_count())


def random_variables(shapes, seed: int = 0):
  """Flax variables for `shapes` (jax.eval_shape of an init): He-normal kernels, unit
  BatchNorm, zero biases; fast (no jitted random init to compile)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rs.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    return np.ones(leaf.shape) if name in ("scale", "var") else np.zeros(leaf.shape)
  return jax.tree_util.tree_map_with_path(lambda p, l: jnp.asarray(fill(p, l), l.dtype), shapes)


def xla_options(items) -> dict:
  """['name=value', ...] (from a flag) -> XLA compiler options for `.compile(...)`."""
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--xla_options: {item!r} is not name=value")
    name, value = item.split("=", 1)
    out[name.strip().removeprefix("--")] = value
  return out


def options_label(options: dict) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in options.items())
