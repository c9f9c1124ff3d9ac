"""What the job runs on, said at start; an accelerator that JAX cannot see, said loudly.

A GPU machine with the CPU-only jaxlib trains on the CPU without an error, 100x slower:
`check` names the hardware it finds and the install command that would use it, and
with `config.require_accelerator` refuses to run. `enable_compilation_cache` keeps
XLA's compiled programs across runs (a resume after preemption, a sweep's variants).
"""

import glob
import os
from typing import Optional

from absl import logging
import jax

INSTALL = {
    "gpu": "pip install -c constraints.txt -e '.[cuda12]' (or '.[cuda13]' for a CUDA 13 driver)",
    "tpu": "pip install -c constraints.txt -e '.[tpu]'",
}


class NoAcceleratorError(RuntimeError):
  """config.require_accelerator is set and JAX sees only the CPU."""


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "fcam_jax", "jax")


def enable_compilation_cache(setting: str) -> str:
  """Turns on JAX's persistent compilation cache in `setting` ('auto': `default_cache_dir()`;
  '': off). Programs that take over a second to compile (the steps) are cached, keyed by
  the program, the XLA options, the jax version and the device. Returns the folder."""
  if not setting:
    return ""
  path = default_cache_dir() if setting == "auto" else os.path.abspath(setting)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache %s not usable (%s): compiling without it", path, e)
    return ""
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def present_accelerator() -> Optional[str]:
  """'gpu' if an NVIDIA driver is loaded, 'tpu' on a TPU VM, else None (from /dev, /proc
  and the TPU environment; JAX is not asked)."""
  if os.path.exists("/proc/driver/nvidia/version") or glob.glob("/dev/nvidia[0-9]*"):
    return "gpu"
  if glob.glob("/dev/accel[0-9]*") or any(
      os.environ.get(v) for v in ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")):
    return "tpu"
  return None


def describe() -> str:
  """'1 process, 8 devices: 8 x NVIDIA H100 80GB HBM3 (gpu)' and the like."""
  devices = jax.devices()
  kinds = {}
  for d in devices:
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  where = ", ".join(f"{n} x {kind}" for kind, n in kinds.items())
  processes = jax.process_count()
  return (f"{processes} process{'es' if processes > 1 else ''}, {len(devices)} devices "
          f"({jax.local_device_count()} local): {where} ({jax.default_backend()})")


def check(require_accelerator: bool = False) -> str:
  """Logs what JAX runs on; warns (or with `require_accelerator` raises) when it is the
  CPU while the machine has a GPU or TPU. Returns the description."""
  text = describe()
  logging.info("JAX: %s", text)
  if jax.default_backend() != "cpu":
    return text
  hardware = present_accelerator()
  if hardware is not None:
    message = (f"this machine has a {hardware.upper()} but JAX runs on the CPU only (the CPU "
               f"jaxlib is installed): {INSTALL[hardware]}")
    if require_accelerator:
      raise NoAcceleratorError(f"config.require_accelerator: {message}")
    logging.warning("!!! %s", message)
  elif require_accelerator:
    raise NoAcceleratorError("config.require_accelerator: JAX sees no GPU or TPU, only the CPU")
  return text
