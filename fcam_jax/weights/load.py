"""torchvision state dict -> WSOL backbone variables, and into a classifier's variables.

A converted checkpoint is a flat {'params/<flax path>': array,
'batch_stats/<flax path>': array} (paths inside the backbone, joined by '/') plus
`__arch__`; `convert_state_dict` makes it, `save_npz` writes it, `load_pretrained`
puts it (or a torchvision file, converted on the fly) into `build_classifier`'s
variables. Layouts: conv OIHW -> HWIO, dense (out, in) -> (in, out), BatchNorm
weight / bias / running_mean / running_var -> scale / bias / mean / var.
"""

import dataclasses
import functools
import importlib
import os
from typing import Dict, List, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from fcam_jax import models
from fcam_jax.weights.state_dict import PretrainedError, read_npz, read_state_dict

COLLECTIONS = ("params", "batch_stats")
ARCH_KEY = "__arch__"
# Source keys with no counterpart in the WSOL backbone (the ImageNet head, dropped blocks).
DROPPED = {
    "resnet50": ("fc.",),
    "vgg16": ("classifier.",),
    "inceptionv3": ("fc.", "AuxLogits.", "Mixed_7a.", "Mixed_7b.", "Mixed_7c."),
}
# Top-level backbone modules that ImageNet models lack (docs/design.md §2): they keep their init.
NEW_LAYERS = {"resnet50": (), "vgg16": ("conv6",), "inceptionv3": ("SPG_A3_1b", "SPG_A3_2b")}
# The backbones (models.BACKBONES) with a torchvision ImageNet layout: those mapped above.
ARCHS = tuple(DROPPED)
assert set(ARCHS) <= set(models.BACKBONES) and set(NEW_LAYERS) == set(ARCHS)
IGNORED_SUFFIX = ".num_batches_tracked"


@dataclasses.dataclass
class Report:
  """What a conversion / load did. Paths are '/'-joined flax paths."""
  arch: str
  source: str
  mapped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (from, to)
  skipped: List[str] = dataclasses.field(default_factory=list)      # source keys not used
  ignored: List[str] = dataclasses.field(default_factory=list)      # num_batches_tracked
  left_at_init: List[str] = dataclasses.field(default_factory=list)

  def __str__(self):
    lines = [f"{self.arch} <- {self.source}: {len(self.mapped)} tensors mapped, "
             f"{len(self.ignored)} num_batches_tracked ignored",
             f"skipped source keys ({len(self.skipped)}):"]
    lines += [f"  {k}" for k in self.skipped]
    lines.append(f"variables left at init ({len(self.left_at_init)}):")
    lines += [f"  {k}" for k in self.left_at_init]
    return "\n".join(lines)


def _check_arch(arch: str):
  if arch not in ARCHS:
    raise PretrainedError(f"no torchvision checkpoint for backbone {arch!r}; "
                          f"supported: {', '.join(ARCHS)}")


def torchvision_key(arch: str, path) -> str:
  """Flax path inside the backbone (tuple of names) -> torchvision state-dict key."""
  _check_arch(arch)
  module = importlib.import_module(models.backbone_class(arch).__module__)
  return module.torchvision_key(tuple(path))


@functools.lru_cache(maxsize=None)
def backbone_shapes(arch: str) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """{(collection, *path): shape} of the backbone's variables (no FLOPs: eval_shape)."""
  _check_arch(arch)
  model = models.backbone_class(arch)()
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                             jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  return {k: tuple(v.shape) for k, v in flat.items()}


def _is_new(arch: str, path) -> bool:
  return path[0] in NEW_LAYERS[arch]


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if leaf == "kernel" and value.ndim == 2:
    return value.T                      # (out, in) -> (in, out)
  return value


def _torch_shape(leaf: str, shape) -> Tuple[int, ...]:
  """The torch shape a flax variable of `shape` comes from (for error messages)."""
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str, source: str = "<dict>"
                       ) -> Tuple[Dict[str, np.ndarray], Report]:
  """torchvision `arch` state dict -> ({'params/...': float32 array}, report).

  Raises PretrainedError on a shape mismatch, a missing required key or a source
  key that belongs to neither the backbone nor the known dropped parts.
  """
  _check_arch(arch)
  report = Report(arch, source)
  out, used, missing = {}, set(), []
  for (collection, *path), shape in backbone_shapes(arch).items():
    name = "/".join([collection, *path])
    if _is_new(arch, path):
      report.left_at_init.append(name)
      continue
    key = torchvision_key(arch, path)
    if key not in state_dict:
      missing.append(key)
      continue
    source_value = np.asarray(state_dict[key])
    value = _to_flax_layout(path[-1], source_value)
    if value.shape != shape:
      raise PretrainedError(
          f"{source}: {key} has shape {tuple(source_value.shape)}, the {arch} backbone needs "
          f"{_torch_shape(path[-1], shape)} (flax {name} {shape})")
    out[name] = np.ascontiguousarray(value, dtype=np.float32)
    used.add(key)
    report.mapped.append((key, name))
  if missing:
    raise PretrainedError(
        f"{source}: {len(missing)} {arch} keys missing, e.g. {', '.join(missing[:5])} "
        f"(is it a torchvision {arch} checkpoint?)")
  new_prefixes = tuple(f"{m}." for m in NEW_LAYERS[arch])
  unexpected = []
  for key in state_dict:
    if key in used:
      continue
    if key.endswith(IGNORED_SUFFIX):
      report.ignored.append(key)
    elif key.startswith(DROPPED[arch] + new_prefixes):
      report.skipped.append(key)
    else:
      unexpected.append(key)
  if unexpected:
    raise PretrainedError(
        f"{source}: {len(unexpected)} keys that a torchvision {arch} does not have, e.g. "
        f"{', '.join(unexpected[:5])} (is it a different architecture?)")
  return out, report


def save_npz(path: str, flat: Mapping[str, np.ndarray], arch: str):
  """Writes a converted checkpoint (plain arrays only: loads with allow_pickle=False)."""
  np.savez(path, **{ARCH_KEY: np.array(arch)}, **flat)


def read_converted(path: str, arch: str) -> Tuple[Dict[str, np.ndarray], Report]:
  """The flat backbone variables in `path`: a converted .npz or any torchvision file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pretrained weights file not found: {path!r}")
  _check_arch(arch)
  if path.lower().endswith(".npz"):
    flat = read_npz(path)
    if ARCH_KEY in flat or any(k.startswith(f"{c}/") for k in flat for c in COLLECTIONS):
      stored = str(flat.pop(ARCH_KEY, arch))
      if stored != arch:
        raise PretrainedError(f"{path}: converted for {stored!r}, not {arch!r}")
      bad = [k for k in flat if k.split("/", 1)[0] not in COLLECTIONS]
      if bad:
        raise PretrainedError(f"{path}: unexpected entries {bad[:5]} in a converted checkpoint")
      return flat, Report(arch, path)
    return convert_state_dict(flat, arch, path)
  return convert_state_dict(read_state_dict(path), arch, path)


def load_pretrained(path: str, variables: Dict, backbone: str) -> Tuple[Dict, Report]:
  """Puts pretrained backbone weights into a classifier's `variables`.

  `variables` is `build_classifier(...).init(...)`'s {'params': {'backbone', 'head'},
  'batch_stats': {'backbone'}}; `path` a converted .npz (`python -m
  fcam_jax.weights.convert`) or a torchvision .pth / .safetensors / .npz. Every
  backbone variable except the new layers (VGG conv6, Inception SPG blocks) must
  be in the file with the same shape; the head and the new layers keep their
  values. Returns (new variables, report); `variables` is not modified.
  """
  flat, report = read_converted(path, backbone)
  report.source = path
  tree = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
  loaded = {}
  for name, value in flat.items():
    collection, rest = name.split("/", 1)
    target = f"{collection}/backbone/{rest}"
    if target not in tree:
      raise PretrainedError(f"{path}: {name} is not a variable of the {backbone} classifier "
                            f"(no {target})")
    old = tree[target]
    if tuple(value.shape) != tuple(old.shape):
      raise PretrainedError(f"{path}: {name} has shape {tuple(value.shape)}, the {backbone} "
                            f"classifier's {target} is {tuple(old.shape)}")
    loaded[target] = jnp.asarray(value, dtype=old.dtype)
  missing = [k for k in tree if k not in loaded and k.split("/")[1] == "backbone"
             and not _is_new(backbone, k.split("/")[2:])]
  if missing:
    raise PretrainedError(f"{path}: {len(missing)} {backbone} backbone variables missing, e.g. "
                          f"{', '.join(missing[:5])}")
  origin = {name: key for key, name in report.mapped}  # torchvision key, when converted here
  report.mapped = [(origin.get(name, name), target)
                   for name, target in zip(flat, loaded)]
  report.left_at_init = [k for k in tree if k not in loaded]
  tree.update(loaded)
  out = flax.traverse_util.unflatten_dict(tree, sep="/")
  for collection, value in variables.items():  # empty collections (VGG's batch_stats: {})
    out.setdefault(collection, value)
  return out, report
