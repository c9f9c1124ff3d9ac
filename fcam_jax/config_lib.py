"""The config schema shared by every `configs/*.py`, its argument parsing and checks.

`configs/<dataset>.py:get_config(arg)` starts from `base_config()`, sets what its
recipe changes (docs/design.md §7), then applies `arg`: comma-separated tokens, each a
backbone name, a CAM method or a stage selector, e.g. `configs/cub.py:vgg16,gradcampp,stage2`.
Every key is described in docs/configs.md.
"""

import itertools
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

import ml_collections

from fcam_jax import cams
from fcam_jax import errors
from fcam_jax import metrics
from fcam_jax import models
from fcam_jax import parallel
from fcam_jax.data import metadata
from fcam_jax.data.records import ON_ERROR

BACKBONES = models.BACKBONES
CAM_METHODS = cams.METHODS
DATASETS = ("synthetic",) + metadata.DATASETS  # the ones with a recipe; any name is accepted
LOCALIZATIONS = ("boxes", "masks")
STAGES = ("stage1", "stage2", "both")


ConfigError = errors.ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Every key fcam_jax reads, with the paper's CUB / ResNet50 / CAM defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = "both"            # stage1 | stage2 | both
  c.half_precision = False     # bf16 activations, fp32 params and losses
  c.parallel = "jit"           # jit (of shard_map over a mesh of all devices) | pmap; same numbers
  c.cpu_ynnpack = False        # XLA:CPU's YNNPACK conv fusions (XLA's default; slower here)
  c.require_accelerator = False  # refuse to run on the CPU (cluster jobs with the wrong jaxlib)

  # Multi-process jobs (fcam_jax/distributed.py); '' = one process, or the cluster's env.
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="", num_processes=0, process_id=-1))

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "CUB"          # synthetic, CUB, OpenImages, ILSVRC, or your dataset's name
  c.dataset.localization = "auto"  # boxes | masks (OpenImages-style); auto: masks for OpenImages
  c.dataset.data_dir = ""      # TFDS data dir (synthetic)
  c.dataset.data_root = ""     # image folder (metadata layout, docs/design.md §8)
  c.dataset.metadata_root = ""
  c.dataset.mask_root = ""     # OpenImages masks
  c.dataset.synthetic = ml_collections.ConfigDict(dict(  # generation parameters
      image_size=80, train_size=1000, val_size=200, test_size=200, seed=0))

  c.data = ml_collections.ConfigDict()
  c.data.resize_size = 256     # train: resize (aspect not kept), random crop, flip
  c.data.crop_size = 224
  c.data.eval_size = 224       # val/test: resize; also the score-map size
  # grain worker processes; 0: read_threads threads in this process; -1 (auto): 0 on the
  # CPU backend (XLA computes on the cores), else min(CPUs - 1, ceil(1000 / 250)) = 4
  # processes on a 5+-CPU machine: 1000 images/s (an H100's stage-1 step target, bf16) /
  # 250 images/s per worker (one core: 224x224 crops of 500x375 JPEGs); see
  # fcam_jax/data/pipeline.py `auto_workers` and benchmarks/README.md "Input pipeline".
  c.data.num_workers = -1
  c.data.read_threads = 4
  c.data.prefetch = 64        # grain prefetch buffer, in images
  c.data.on_error = "fail"     # fail | skip: a bad image stops the run naming file:line, or is
                               # left out and listed in <workdir>/skipped_files.json
  c.data.verify = False        # decode every image (and mask) once at load to find bad files

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet50"
  c.model.num_classes = 200
  c.model.pretrained = ""      # ImageNet weights for the backbone (fcam_jax.weights.convert)

  c.cam = ml_collections.ConfigDict()
  c.cam.method = "cam"
  c.cam.tap = ""               # '' = the backbone's CAM_TAP
  # The methods' options (gradcampp_skip_alpha_division: True is the original code's
  # quirk; smooth_samples, smooth_std; scorecam_chunk, ablationcam_chunk).
  c.cam.update(cams.DEFAULT_OPTIONS)

  c.stage1 = ml_collections.ConfigDict()
  c.stage1.epochs = 50
  c.stage1.batch_size = 32
  c.stage1.lr = 0.0017
  c.stage1.lr_decay_epochs = 15
  c.stage1.lr_decay_factor = 0.1
  c.stage1.classifier_lr_mult = 10.0
  c.stage1.momentum = 0.9
  c.stage1.nesterov = True
  c.stage1.weight_decay = 1e-4

  c.stage2 = ml_collections.ConfigDict()
  c.stage2.epochs = 50
  c.stage2.batch_size = 32
  c.stage2.lr = 0.01
  c.stage2.lr_decay_epochs = 0  # 0: constant
  c.stage2.lr_decay_factor = 0.1
  c.stage2.momentum = 0.9
  c.stage2.nesterov = True
  c.stage2.weight_decay = 1e-4
  c.stage2.classifier_checkpoint = ""  # '' = <workdir>/stage1 best

  c.fcam = ml_collections.ConfigDict()
  c.fcam.decoder_channels = ()  # () = the backbone's DECODER_CHANNELS
  # The sizes below (crf.sigma_xy, seeds.erosion / dilation, crf.weight) are for crops of
  # reference_size pixels (the paper's 224); scale_with_image scales them to
  # data.crop_size at run time (docs/design.md §6.4).
  c.fcam.scale_with_image = True
  c.fcam.reference_size = 224
  c.fcam.seeds = ml_collections.ConfigDict()
  c.fcam.seeds.n_minus = 0.1
  c.fcam.seeds.sl_max = 1
  c.fcam.seeds.sl_min = 1
  c.fcam.seeds.erosion = 11
  c.fcam.seeds.dilation = 3
  c.fcam.seeds.weight = 1.0
  c.fcam.seeds.enabled = True
  c.fcam.crf = ml_collections.ConfigDict()
  c.fcam.crf.enabled = True
  # The paper's 2e-9 was tuned on the original's permutohedral lattice, whose W S is 0.56x
  # the exact kernel's this loss uses (median over natural images, benchmarks/README.md):
  # 2e-9 x 0.56 keeps the original's strength (docs/design.md §6.2).
  c.fcam.crf.weight = 1.1e-9
  c.fcam.crf.sigma_rgb = 15.0
  c.fcam.crf.sigma_xy = 100.0
  c.fcam.crf.scale = 1.0        # image downscale factor before the CRF
  c.fcam.crf.grid_cell = 0.5    # bilateral-grid cell, in units of sigma
  c.fcam.crf.batch_chunk = -1   # images per grid pass (speed/memory only); 0: whole batch;
                                # -1: 4 on CPU (caches), the whole batch on GPU/TPU
  c.fcam.size = ml_collections.ConfigDict()
  c.fcam.size.enabled = True
  c.fcam.size.weight = 0.1
  c.fcam.size.t_init = 1.0
  c.fcam.size.t_mult = 1.01
  c.fcam.size.t_max = 10.0

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64
  c.eval.val_interval = 0.004   # threshold step on val (model selection)
  c.eval.test_interval = 0.001  # threshold step on test
  c.eval.iou_thresholds = (30, 50, 70)
  c.eval.selection_metric = "MaxBoxAcc"
  c.eval.num_figures = 8       # test images drawn per stage (fcam_jax/figures.py); 0: none
  c.eval.save_scoremaps = False  # test maps to <workdir>/<stage>/scoremaps/<map>/<id>.npy

  c.log_every_steps = 50
  c.checkpoint_every_epochs = 1
  c.async_checkpoints = True   # write checkpoints in the background (docs/faults.md)
  # XLA's persistent compilation cache: 'auto' = $XDG_CACHE_HOME/fcam_jax/jax (or
  # ~/.cache/...), a folder, or '' for none. Resumes and sweeps skip recompiling.
  c.compilation_cache = "auto"
  return c


def apply_arg(config: ml_collections.ConfigDict, arg: Optional[str]) -> ml_collections.ConfigDict:
  """Applies `backbone,method,stage` tokens from `--config=file.py:arg`."""
  for token in (t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    if token in BACKBONES:
      config.model.backbone = token
    elif token in CAM_METHODS:
      config.cam.method = token
    elif token in STAGES:
      config.stages = token
    else:
      raise ConfigError(
          f"config argument {token!r} is not a backbone ({', '.join(BACKBONES)}), "
          f"a CAM method ({', '.join(CAM_METHODS)}) or a stage ({', '.join(STAGES)})")
  return config


def axis(key: str, values: Iterable[Any]) -> List[Dict[str, Any]]:
  """Sweep variants (fcam_jax.sweep): one per value of the config key `key`."""
  return [{key: v} for v in values]


def product(*axes: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Sweep variants: every combination of the axes' variants (later axes vary fastest)."""
  return [dict(itertools.chain.from_iterable(d.items() for d in combo))
          for combo in itertools.product(*axes)]


def get(node, key: str):
  """The value at dotted `key` of a ConfigDict or nested dict; KeyError naming the key."""
  for i, part in enumerate(key.split(".")):
    if not hasattr(node, "keys") or part not in node:
      raise KeyError(".".join(key.split(".")[:i + 1]))
    node = node[part]
  return node


def unknown_key_message(config, key: str, origin: str) -> str:
  """'unknown config key ...; <section> has: ...' for a dotted `key` not in `config`."""
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not hasattr(node, "keys") or part not in node:
      section = ".".join(["config"] + parts[:i])
      keys = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
      return (f"unknown config key 'config.{'.'.join(parts[:i + 1])}' in {origin}; "
              f"{section} has: {keys}")
    node = node[part]
  return ""


def override(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
             source: str = "override") -> ml_collections.ConfigDict:
  """A validated copy of `config` with dotted-key `overrides`; errors name the key and source."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    try:
      node = get(config, ".".join(parents)) if parents else config
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(key)
    except KeyError:
      raise ConfigError(f"{source}: unknown config key 'config.{key}'") from None
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{source}: config.{key}={value!r}: {e}") from e
  try:
    return validate(config)
  except ConfigError as e:
    raise ConfigError(f"{source}: {e}") from e


def flatten(d: Mapping, prefix: str = ""):
  """(dotted key, value) of every leaf of a nested dict."""
  for k, v in d.items():
    if isinstance(v, Mapping):
      yield from flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _choice(config, key: str, choices: Iterable[Any]):
  value = get(config, key)
  if value not in tuple(choices):
    raise ConfigError(f"config.{key}={value!r}: must be one of {', '.join(map(str, choices))}")


def _positive(config, *keys: str, allow_zero: bool = False):
  for key in keys:
    value = get(config, key)
    if value is None or (value < 0 if allow_zero else value <= 0):
      bound = ">= 0" if allow_zero else "> 0"
      raise ConfigError(f"config.{key}={value!r}: must be {bound}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError (naming the key) for any value fcam_jax cannot run with."""
  _choice(config, "model.backbone", BACKBONES)
  _choice(config, "cam.method", CAM_METHODS)
  _choice(config, "dataset.localization", ("auto",) + LOCALIZATIONS)
  if not isinstance(config.dataset.name, str) or not config.dataset.name.strip():
    raise ConfigError(f"config.dataset.name={config.dataset.name!r}: must be a non-empty name")
  _choice(config, "stages", STAGES)
  _choice(config, "parallel", parallel.BACKENDS)
  _choice(config, "data.on_error", ON_ERROR)
  _choice(config, "eval.selection_metric", metrics.SELECTION)
  _positive(config, "model.num_classes", "data.resize_size", "data.crop_size",
            "data.eval_size", "stage1.batch_size", "stage2.batch_size", "eval.batch_size",
            "stage1.lr", "stage2.lr", "eval.val_interval", "eval.test_interval",
            "cam.smooth_samples", "cam.scorecam_chunk", "cam.ablationcam_chunk",
            "fcam.crf.sigma_rgb", "fcam.crf.sigma_xy", "fcam.crf.scale", "fcam.crf.grid_cell",
            "fcam.size.t_init", "fcam.size.t_mult", "fcam.size.t_max", "fcam.reference_size",
            "log_every_steps", "checkpoint_every_epochs")
  _positive(config, "stage1.epochs", "stage2.epochs", "stage1.weight_decay",
            "stage2.weight_decay", "cam.smooth_std",
            "fcam.seeds.sl_max", "fcam.seeds.sl_min", "stage1.lr_decay_epochs",
            "stage2.lr_decay_epochs", "eval.num_figures",
            allow_zero=True)
  if config.fcam.crf.batch_chunk < -1:
    raise ConfigError(f"config.fcam.crf.batch_chunk={config.fcam.crf.batch_chunk!r}: must be "
                      ">= 0, or -1 for the backend's default")
  if config.data.num_workers < -1:
    raise ConfigError(f"config.data.num_workers={config.data.num_workers!r}: must be >= 0, "
                      "or -1 (auto)")
  if config.data.crop_size > config.data.resize_size:
    raise ConfigError(f"config.data.crop_size={config.data.crop_size} is larger than "
                      f"config.data.resize_size={config.data.resize_size}")
  if not 0.0 < config.fcam.seeds.n_minus < 1.0:
    raise ConfigError(f"config.fcam.seeds.n_minus={config.fcam.seeds.n_minus!r}: must be in (0, 1)")
  for key in ("erosion", "dilation"):
    k = config.fcam.seeds[key]
    if k < 1 or k % 2 == 0:
      raise ConfigError(f"config.fcam.seeds.{key}={k!r}: must be an odd size >= 1")
  for t in config.eval.iou_thresholds:
    if not 0 < t <= 100:
      raise ConfigError(f"config.eval.iou_thresholds has {t!r}: IoU thresholds are percents in (0, 100]")
  if config.model.pretrained and not os.path.isfile(config.model.pretrained):
    raise ConfigError(f"config.model.pretrained={config.model.pretrained!r}: no such file")
  if config.model.pretrained and config.model.backbone == "small":
    raise ConfigError("config.model.pretrained: there are no ImageNet weights for the small backbone")
  if config.dataset.name == "synthetic":
    if not config.dataset.data_dir:
      raise ConfigError("config.dataset.data_dir is empty: the synthetic dataset needs a TFDS data dir")
  elif not (config.dataset.data_root and config.dataset.metadata_root):
    raise ConfigError(f"config.dataset.data_root / metadata_root must be set for {config.dataset.name}")
  masks = config.dataset.localization == "masks" or (
      config.dataset.localization == "auto" and config.dataset.name == "OpenImages")
  if masks and config.dataset.name != "synthetic" and not config.dataset.mask_root:
    raise ConfigError(f"config.dataset.mask_root must be set for {config.dataset.name} "
                      "(mask localization)")
  return config


def _odd(size: float) -> int:
  """The odd integer >= 1 nearest to `size` (halfway: the larger)."""
  return max(1, 2 * math.floor((size - 1) / 2 + 0.5) + 1)


def stage2_sizes(config) -> Dict[str, Any]:
  """The stage-2 sizes used for `config.data.crop_size` crops: `config.fcam`'s values at
  `reference_size`, scaled with the crop side when `scale_with_image` (sigma_xy and the
  seed kernels by s / ref, the kernels rounded to odd sizes; the CRF weight, a weight
  of a sum over pixel pairs, by (ref / s)^4) or as given otherwise."""
  f, s = config.fcam, config.data.crop_size
  r = s / f.reference_size if f.scale_with_image else 1.0
  return {"crf.sigma_xy": f.crf.sigma_xy * r, "crf.weight": f.crf.weight / r ** 4,
          "seeds.erosion": _odd(f.seeds.erosion * r) if r != 1 else f.seeds.erosion,
          "seeds.dilation": _odd(f.seeds.dilation * r) if r != 1 else f.seeds.dilation,
          "scale": r}


def with_stage2_sizes(config) -> ml_collections.ConfigDict:
  """A copy of `config` whose `fcam` holds the sizes of `stage2_sizes`."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in stage2_sizes(config).items():
    if key != "scale":
      section, leaf = key.split(".")
      out.fcam[section][leaf] = value
  return out


def decoder_channels(config) -> tuple:
  """`config.fcam.decoder_channels`, or the backbone's DECODER_CHANNELS if empty."""
  return (tuple(config.fcam.decoder_channels)
          or models.backbone_class(config.model.backbone).DECODER_CHANNELS)
