r"""Everything that matters on an accelerator, measured in one run of a few minutes.

  python benchmarks/accelerator_check.py [--out=accelerator_check.json] [--budget_s=420]
      [--profile_dir=DIR] [--quick]

Self-contained: it generates its data (random batches; a CUB-format release of JPEGs,
`benchmarks/bench_input.py`), measures in priority order, and prints one Markdown table
(also written, with every detail, as JSON to `--out` after each item, so that a run
stopped early leaves what it measured). An item that would end past `--budget_s`
(estimated from the items measured before it) is not started and is marked
'skipped (budget)'. What it measures, for the backbones of docs/design.md §2 at
224x224 (ResNet50 first), fp32 and bf16 (`config.half_precision`):

* train steps: stage 1 (the classifier) and stage 2 (F-CAM), batch 32, through the
  compiled steps training runs (`stage1.stage` / `stage2.stage` on a `loop.Run`),
  timed after a warm-up step with `block_until_ready`; the first call (compile + one
  step) and the compile time (first call minus a step);
* the largest batch that fits: doubling from 64 until RESOURCE_EXHAUSTED (or
  `--max_batch_cap`), with the device's peak memory (`memory_stats()`, None on CPU);
* inference: F-CAM maps (the stage-2 `val` maps: encoder + decoder) and GradCAM maps
  (`inference.forward` through the stage-1 maps), batch 64;
* the dense CRF loss + gradient, batch 32 x 224 x 224 x 2, grid_cell 0.5 and 1.0;
* the parallel backends (`config.parallel`: pmap and jit) on the ResNet50 stage-2 step;
* the input pipeline's images/s on this machine's CPUs (`bench_input.measure`) and the
  host's scoring rate of the evaluators (boxes at the val / test threshold steps, PxAP);
* the CUB recipe end to end, as a user runs it, in subprocesses: the release ->
  `python -m fcam_jax.data.prepare_cub` -> `python -m fcam_jax.main
  --config=configs/cub.py:resnet50,cam` (both stages, a few epochs) -> `python -m
  fcam_jax.report`; its wall time and test metrics;
* the projected wall time of the CUB and OpenImages recipes from the measured rates
  (the formula is printed under the table).

Each figure is printed next to its target for one H100. `--profile_dir` writes a
jax.profiler trace of a few ResNet50 stage-2 steps (open it with TensorBoard's profile
plugin or xprof). `--quick`: the small backbone at 64x64, batch 8, two timed steps, a
tiny release, one epoch per stage: about a minute on a CPU, the CI test
(tests/test_accelerator_check.py). benchmarks/README.md ("Accelerator check") says how
to run it on the device machine.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, Optional

from absl import app
from absl import flags
from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Before JAX starts: device memory on demand, not 75 % of it taken at the start, so that the
# end-to-end run (a subprocess, started with the same setting) can allocate beside this
# process. The cap on what one process may use is unchanged (memory_stats' bytes_limit).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bench_input  # noqa: E402
from fcam_jax import checkpoint as ckpt_lib  # noqa: E402
from fcam_jax import config_lib  # noqa: E402
from fcam_jax import devices  # noqa: E402
from fcam_jax import evaluation  # noqa: E402
from fcam_jax import files  # noqa: E402
from fcam_jax import loop  # noqa: E402
from fcam_jax import losses  # noqa: E402
from fcam_jax import parallel as parallel_lib  # noqa: E402
from fcam_jax import stage1  # noqa: E402
from fcam_jax import stage2  # noqa: E402
from fcam_jax.data import pipeline  # noqa: E402
from fcam_jax.data import sources  # noqa: E402
from fcam_jax.data import synthetic  # noqa: E402
from fcam_jax.data.records import ImageRecord  # noqa: E402
from fcam_jax.metrics import BoxEvaluator, MaskEvaluator  # noqa: E402

# The backend training uses by default (measured first), and the other one (item 8).
DEFAULT_PARALLEL = config_lib.base_config().parallel
OTHER_PARALLEL = next(b for b in parallel_lib.BACKENDS if b != DEFAULT_PARALLEL)
# JAX's log line for a program read from the persistent cache (JAX_LOG_COMPILES=1).
_CACHE_HIT = re.compile(r"Persistent compilation cache hit for '[^']*' with key '([^']+)'")

_OUT = flags.DEFINE_string("out", "accelerator_check.json", "The JSON results file.")
_BUDGET = flags.DEFINE_float("budget_s", 420.0, "Items that would end later are skipped.")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes: about a minute on a CPU (the CI test).")
_PROFILE = flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the ResNet50 "
                               "stage-2 step here.")
_PROFILE_PRECISION = flags.DEFINE_enum("profile_precision", "fp32", ["fp32", "bf16"],
                                       "The stage-2 step traced with --profile_dir.")
_BACKBONES = flags.DEFINE_list("backbones", None, "Default resnet50,vgg16,inceptionv3 "
                               "(--quick: small).")
_PRECISIONS = flags.DEFINE_list("precisions", None, "fp32 and/or bf16 (default both; "
                                "--quick fp32).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per figure (default 10; --quick 2).")
_MAX_BATCH_CAP = flags.DEFINE_integer("max_batch_cap", None, "Largest batch tried "
                                      "(default 2048; --quick 16).")
_E2E_EPOCHS = flags.DEFINE_integer("e2e_epochs", None, "Epochs per stage of the end-to-end "
                                   "run (default 2; --quick 1).")
_TRAIN_IMAGES = flags.DEFINE_integer("train_images", None, "Train images of the generated "
                                     "release (default: enough to time the input pipeline "
                                     "with CPUs - 1 workers; --quick 32).")
_HARD_LIMIT = flags.DEFINE_float("hard_limit_s", None, "Stop here whatever is running, after "
                                 "writing the table (default --budget_s + 45; exit code 3).")
_SKIP = flags.DEFINE_list("skip", [], "Groups left out (a second run's focus): steps, crf, "
                          "inference, input (and the host evaluators), e2e, parallel, "
                          "max_batch.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Keep the release, checkpoints and the end-to-end "
                               "run here (default: a temporary folder, removed).")

PRECISIONS = ("fp32", "bf16")
# Targets for one H100 (the task's): figure -> (comparison, value, unit).
TARGETS = {
    "stage1_bf16": (">=", 1000.0, "images/s"),
    "stage2": (">=", 500.0, "images/s"),
    "crf_default": ("<", 10.0, "ms"),
    "fcam_bf16": (">=", 2000.0, "maps/s"),
    "cub_stage2_projected": ("<=", 600.0, "s"),
}
# The recipes projected (docs/design.md §7-8).
RECIPES = {
    "CUB": dict(train=5994, val=1000, test=5794, epochs=(50, 50), masks=False),
    "OpenImages": dict(train=29819, val=2500, test=5000, epochs=(10, 10), masks=True),
}
SKIPPED = "skipped (budget)"


# ----------------------------------------------------------------------------- machine


def _lscpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _nvidia_smi() -> str:
  if not shutil.which("nvidia-smi"):
    return ""
  try:
    return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                           "--format=csv,noheader"], capture_output=True, text=True,
                          timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return ""


def memory_stats() -> Optional[Dict[str, int]]:
  """The first device's memory_stats() (None where the backend has none, e.g. the CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return dict(stats) if stats else None


def machine() -> Dict[str, Any]:
  import jaxlib  # pylint: disable=g-import-not-at-top
  stats = memory_stats() or {}
  return {
      "jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "?"),
      "python": platform.python_version(), "backend": jax.default_backend(),
      "devices": devices.describe(), "device_kind": jax.devices()[0].device_kind,
      "gpu": _nvidia_smi(), "cpu": _lscpu_model(), "cpus": pipeline.available_cpus(),
      "device_memory_limit": stats.get("bytes_limit"),
      "xla_python_client_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
      "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
  }


# ----------------------------------------------------------------------------- helpers


def is_oom(e: BaseException) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def timed_calls(call: Callable[[], Any], steps: int, warmup: int = 1) -> Dict[str, float]:
  """{'first_s': the first call (compile + run), 'per_call_s': mean of `steps` calls after
  `warmup` more; every call's outputs awaited with block_until_ready}."""
  t = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - t
  for _ in range(warmup):
    jax.block_until_ready(call())
  t = time.perf_counter()
  out = None
  for _ in range(steps):
    out = call()
  jax.block_until_ready(out)
  per = (time.perf_counter() - t) / steps
  return {"first_s": first, "per_call_s": per, "compile_s": max(0.0, first - per)}


def random_batch(batch: int, size: int, classes: int, seed: int = 0) -> Dict[str, np.ndarray]:
  """Photo-like images (the synthetic dataset's renders: smooth backgrounds, an object),
  labels, indices; the step's cost does not depend on them, the CRF grid's barely."""
  rng = np.random.default_rng(seed)
  base = [synthetic.render(np.random.default_rng([seed, i]), size, i % 4)[0] for i in range(4)]
  images = np.stack([base[i % 4] for i in range(batch)])
  return {"image": images, "label": rng.integers(0, classes, batch).astype(np.int32),
          "index": np.arange(batch, dtype=np.int32)}


def _fmt_rate(x: Optional[float]) -> str:
  return "-" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.3g}")


def _gib(x: Optional[int]) -> str:
  return "-" if x is None else f"{x / 2**30:.1f} GiB"


# ----------------------------------------------------------------------------- the check


class Check:
  """The measurements, their budget and their JSON file."""

  def __init__(self, out: str, budget_s: float, quick: bool, workdir: str):
    self.t0 = time.perf_counter()
    self.out, self.budget, self.quick, self.workdir = out, budget_s, quick, workdir
    self.steps = _STEPS.value or (2 if quick else 10)
    self.size = 64 if quick else 224
    self.batch = 8 if quick else 32
    self.infer_batch = 8 if quick else 64
    self.cap = _MAX_BATCH_CAP.value or (16 if quick else 2048)
    self.classes = 200  # CUB's head; the generated release uses 8 of them
    self.backbones = _BACKBONES.value or (["small"] if quick else
                                          ["resnet50", "vgg16", "inceptionv3"])
    self.precisions = [p for p in PRECISIONS
                       if p in (_PRECISIONS.value or (["fp32"] if quick else PRECISIONS))]
    self.main_backbone = self.backbones[0]
    cpus = pipeline.available_cpus()
    self.input_workers = sorted({0, 1} if quick else
                                {0, 1, pipeline.auto_workers("gpu", cpus), max(1, cpus - 1)})
    self.train_images = _TRAIN_IMAGES.value or (
        bench_input.min_batches(max(self.input_workers)) * self.batch)
    self.e2e_epochs = _E2E_EPOCHS.value or (1 if quick else 2)
    # The release's val and test images per class (8 classes). The end-to-end run's train
    # split then has `train_images`, as the stages built here: the same step programs,
    # which it finds in the compilation cache.
    self.val_per_class = self.test_per_class = 1 if quick else 4
    self.cache_dir = os.path.join(workdir, "jax_cache")
    self.results: Dict[str, Any] = {
        "machine": machine(),
        "settings": {"quick": quick, "budget_s": budget_s, "size": self.size,
                     "batch": self.batch, "inference_batch": self.infer_batch,
                     "timed_steps": self.steps, "max_batch_cap": self.cap,
                     "backbones": self.backbones, "precisions": self.precisions,
                     "train_images": self.train_images, "e2e_epochs": self.e2e_epochs,
                     "argv": sys.argv},
        "steps": [], "max_batch": [], "inference": [], "crf": [], "parallel": [],
        "input": {}, "metrics": [], "e2e": {}, "projection": {}, "targets": [], "log": []}
    self._stages: Dict[tuple, Dict] = {}
    self._costs: Dict[str, float] = {}
    self._built_s = 0.0  # seconds the current item spent building stage objects
    self.current = ""  # the item running
    self._release = None  # (process, cub, metadata)

  # -- bookkeeping

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def write(self):
    self.results["elapsed_s"] = round(self.elapsed(), 1)
    files.write_json(self.out, self.results)

  def estimate(self, kind: str, default: float) -> float:
    """The last measured cost of an item of `kind` (its stage building excluded), else
    `default` (seconds)."""
    return self._costs.get(kind, default)

  def setup_estimate(self, backbone: str, precision: str, name: str,
                     parallel: str = DEFAULT_PARALLEL) -> float:
    """Seconds to build the stage objects an item needs and that are not built yet."""
    todo = [(backbone, precision, name, parallel)]
    if name == "stage2":
      todo.append((backbone, "fp32", "stage1", DEFAULT_PARALLEL))  # its classifier checkpoint
    missing = sum(key not in self._stages for key in todo)
    return missing * self._costs.get("setup", 10.0 if self.quick else 30.0)

  def run_item(self, name: str, estimate: float, fn: Callable[[], Any], kind: str = "",
               on_skip: Optional[Callable[[], None]] = None) -> Any:
    """fn() unless it would end past the budget; logs its status and time; writes JSON."""
    if self.elapsed() + estimate > self.budget:
      self.results["log"].append({"item": name, "status": SKIPPED,
                                  "estimate_s": round(estimate, 1)})
      if on_skip is not None:
        on_skip()
      self.write()
      print(f"[{self.elapsed():6.1f}s] {name}: {SKIPPED} (estimate {estimate:.0f}s)", flush=True)
      return None
    t = time.perf_counter()
    status, out = "ok", None
    self.current = name
    try:
      out = fn()
    except Exception as e:  # pylint: disable=broad-except
      status = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      logging.error("%s failed:\n%s", name, traceback.format_exc())
    seconds = time.perf_counter() - t
    if kind and status == "ok":
      self._costs[kind] = seconds - self._built_s  # stage building is estimated apart
    self._built_s = 0.0
    self.current = ""
    self.results["log"].append({"item": name, "status": status, "seconds": round(seconds, 1),
                                "estimate_s": round(estimate, 1)})
    self.write()
    print(f"[{self.elapsed():6.1f}s] {name}: {status} ({seconds:.1f}s)", flush=True)
    return out

  # -- configs and stages

  def config(self, backbone: str, precision: str, parallel: str = DEFAULT_PARALLEL,
             batch: int = 0):
    c = config_lib.base_config()  # configs/cub.py's recipe
    c.model.backbone = backbone
    c.model.num_classes = self.classes
    c.half_precision = precision == "bf16"
    c.parallel = parallel
    c.compilation_cache = self.cache_dir
    c.cam.method = "cam"
    if self.quick:
      c.data.resize_size, c.data.crop_size, c.data.eval_size = 72, 64, 64
    c.stage1.batch_size = c.stage2.batch_size = batch or self.batch
    c.stage1.epochs = c.stage2.epochs = self.e2e_epochs
    c.dataset.data_root = c.dataset.metadata_root = self.workdir  # not read here
    return c

  def _run(self, config, workdir: str) -> loop.Run:
    par = parallel_lib.DataParallel(config.parallel,
                                    parallel_lib.compiler_options(config.cpu_ynnpack))
    split = sources.Split("train", range(self.train_images), records=[])
    return loop.Run(config=config, workdir=workdir, splits={"train": split}, writer=None,
                    parallel=par)

  def cache_entries(self) -> set:
    """The programs in the persistent compilation cache (keys, as JAX logs them)."""
    if not os.path.isdir(self.cache_dir):
      return set()
    return {n[:-len("-cache")] for n in os.listdir(self.cache_dir) if n.endswith("-cache")}

  def _backbone_dir(self, backbone: str) -> str:
    return os.path.join(self.workdir, "stages", backbone)

  def stage(self, backbone: str, precision: str, name: str,
            parallel: str = DEFAULT_PARALLEL) -> Dict:
    """{'run', 'stage', 'state': [replicated state]} of a stage, built once. Stage 1 is
    built with GradCAM maps (its train step does not depend on the CAM method); stage 2
    on stage 1's initial classifier, checkpointed as training would."""
    key = (backbone, precision, name, parallel)
    if key in self._stages:
      return self._stages[key]
    if name == "stage2":
      self.stage(backbone, "fp32", "stage1")  # the classifier checkpoint (timed on its own)
    t = time.perf_counter()
    workdir = self._backbone_dir(backbone)
    config = self.config(backbone, precision, parallel)
    if name == "stage1":
      config.cam.method = "gradcam"
      run = self._run(config, workdir)
      st = stage1.stage(run)
      ckpt_dir = os.path.join(workdir, "stage1", "checkpoints")
      if not os.path.isdir(ckpt_dir):
        ckpt = ckpt_lib.Checkpointer(ckpt_dir)
        ckpt.save(0, st.state, {"history": []}, 0.0)
        ckpt.close()
    else:
      run = self._run(config, workdir)
      st = stage2.stage(run)
    entry = {"run": run, "stage": st, "state": [run.parallel.replicate(st.state)]}
    self._stages[key] = entry
    built = time.perf_counter() - t
    self._built_s += built
    self._costs["setup"] = max(built, self._costs.get("setup", 0.0))
    return entry

  # -- items

  def train_step(self, backbone: str, precision: str, name: str, batch: int = 0,
                 parallel: str = DEFAULT_PARALLEL, steps: int = 0, profile_dir: str = "") -> Dict:
    entry = self.stage(backbone, precision, name, parallel)
    run, st, holder = entry["run"], entry["stage"], entry["state"]
    batch = batch or self.batch
    data = run.parallel.shard(random_batch(batch, self.size, self.classes))

    def call():
      holder[0], m = st.train_step(holder[0], data)
      return m
    before = self.cache_entries()
    try:
      t = timed_calls(call, steps or self.steps)
    except Exception:
      holder[0] = run.parallel.replicate(st.state)  # a failed call may have eaten the donated state
      raise
    if profile_dir:
      jax.profiler.start_trace(profile_dir)
      for _ in range(3):
        jax.block_until_ready(call())
      jax.profiler.stop_trace()
    stats = memory_stats() or {}
    return {"backbone": backbone, "precision": precision, "stage": name, "batch": batch,
            "parallel": parallel, "images_per_s": batch / t["per_call_s"],
            "ms_per_step": 1e3 * t["per_call_s"], "first_call_s": t["first_s"],
            "compile_s": t["compile_s"], "peak_bytes": stats.get("peak_bytes_in_use"),
            "cache_entries": sorted(self.cache_entries() - before), "status": "ok"}

  def step_item(self, backbone: str, precision: str, name: str, parallel: str = DEFAULT_PARALLEL,
                section: str = "steps", profile_dir: str = ""):
    label = f"{section} {backbone} {name} {precision} {parallel} b{self.batch}"
    kind = f"step:{name}"
    setup = self.setup_estimate(backbone, precision, name, parallel)
    row = {"backbone": backbone, "precision": precision, "stage": name, "batch": self.batch,
           "parallel": parallel}

    def fn():
      out = self.train_step(backbone, precision, name, parallel=parallel, profile_dir=profile_dir)
      row.update(out)
      return out
    out = self.run_item(label, setup + self.estimate(kind, 90.0 if not self.quick else 20.0),
                        fn, kind=kind)
    if out is None:
      row["status"] = self.results["log"][-1]["status"]
    self.results[section].append(row)
    self.write()

  def max_batch_item(self, backbone: str, name: str, precision: str = "fp32"):
    """Doubles the batch from 2x the step batch until RESOURCE_EXHAUSTED, the cap or the
    budget; each new batch compiles the step again."""
    row = {"backbone": backbone, "stage": name, "precision": precision, "fits": [],
           "largest_fitting": None, "first_oom": None, "status": "running"}
    self.results["max_batch"].append(row)
    known = [r for r in self.results["steps"] if r.get("backbone") == backbone
             and r.get("stage") == name and r.get("precision") == precision
             and r.get("status") == "ok"]
    if known:
      row["largest_fitting"] = known[0]["batch"]
    batch = self.batch * 2
    last_cost = (known[0]["first_call_s"] * 1.3 if known else
                 self.setup_estimate(backbone, precision, name) + self.estimate(
                     f"step:{name}", 20.0 if self.quick else 90.0))
    while batch <= self.cap:
      result = {}

      def fn(batch=batch):
        try:
          out = self.train_step(backbone, precision, name, batch=batch, steps=3)
        except Exception as e:  # pylint: disable=broad-except
          if is_oom(e):
            result["oom"] = str(e).splitlines()[0][:200]
            return None
          raise
        result.update(out)
        return out
      t = time.perf_counter()
      self.run_item(f"max batch {backbone} {name} {precision} b{batch}", last_cost, fn,
                    kind="")
      status = self.results["log"][-1]["status"]
      if status == SKIPPED:
        row["status"] = f"{SKIPPED} at batch {batch}"
        break
      if status != "ok":
        row["status"] = status
        break
      if "oom" in result:
        row["first_oom"] = batch
        row["oom_message"] = result["oom"]
        row["status"] = "ok"
        break
      row["fits"].append({"batch": batch, "images_per_s": result["images_per_s"],
                          "first_call_s": result["first_call_s"],
                          "peak_bytes": result["peak_bytes"]})
      row["largest_fitting"] = batch
      row["peak_bytes"] = result["peak_bytes"]
      last_cost = (time.perf_counter() - t) * 1.5
      batch *= 2
    else:
      row["status"] = f"cap {self.cap} reached"
    self.write()

  def inference_item(self, backbone: str, precision: str, method: str):
    """F-CAM maps (stage 2's val maps) or GradCAM maps (stage 1's), batch `infer_batch`."""
    row = {"backbone": backbone, "precision": precision, "method": method,
           "batch": self.infer_batch}
    kind = "inference"

    def fn():
      entry = self.stage(backbone, precision, "stage2" if method == "fcam" else "stage1")
      run, st = entry["run"], entry["stage"]
      variables = st.variables(entry["state"][0])
      batch = random_batch(self.infer_batch, self.size, self.classes)
      data = run.parallel.shard({"image": batch["image"], "label": batch["label"]})
      keys = run.parallel.keys(jax.random.key(0))
      t = timed_calls(lambda: st.val.fn(variables, data, keys), self.steps)
      row.update({"maps_per_s": self.infer_batch / t["per_call_s"],
                  "ms_per_batch": 1e3 * t["per_call_s"], "first_call_s": t["first_s"],
                  "compile_s": t["compile_s"], "status": "ok"})
    setup = self.setup_estimate(backbone, precision, "stage2" if method == "fcam" else "stage1")
    self.run_item(f"inference {backbone} {method} {precision} b{self.infer_batch}",
                  setup + self.estimate(kind, 40.0 if not self.quick else 10.0), fn, kind=kind)
    row.setdefault("status", self.results["log"][-1]["status"])
    self.results["inference"].append(row)
    self.write()

  def crf_item(self, grid_cell: float):
    """losses.dense_crf_loss + its gradient, batch x size x size x 2, the recipe's sigmas
    scaled to the crop (docs/design.md §6.4)."""
    config = config_lib.with_stage2_sizes(self.config(self.main_backbone, "fp32"))
    crf = config.fcam.crf
    row = {"grid_cell": grid_cell, "batch": self.batch, "size": self.size,
           "sigma_xy": crf.sigma_xy, "sigma_rgb": crf.sigma_rgb, "batch_chunk": crf.batch_chunk}

    def fn():
      batch = random_batch(self.batch, self.size, 2)
      images = jnp.asarray(batch["image"], jnp.float32)
      logits = jax.random.normal(jax.random.key(0), (self.batch, self.size, self.size, 2))
      probs = jax.nn.softmax(logits, -1)

      def loss(p):
        return losses.dense_crf_loss(p, images, sigma_rgb=crf.sigma_rgb, sigma_xy=crf.sigma_xy,
                                     grid_cell=grid_cell, batch_chunk=crf.batch_chunk)
      f = jax.jit(jax.value_and_grad(loss))
      t = timed_calls(lambda: f(probs), self.steps)
      row.update({"ms": 1e3 * t["per_call_s"], "first_call_s": t["first_s"],
                  "compile_s": t["compile_s"], "status": "ok"})
    self.run_item(f"crf grid_cell {grid_cell} b{self.batch}x{self.size}",
                  self.estimate("crf", 30.0 if not self.quick else 10.0), fn, kind="crf")
    row.setdefault("status", self.results["log"][-1]["status"])
    self.results["crf"].append(row)
    self.write()

  # -- data

  def start_release(self):
    """Writes the release in a background process (CPU work beside the device's)."""
    root = os.path.join(self.workdir, "release")
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys, time; t = time.time(); sys.path[:0] = [%r, %r]; import bench_input; "
            "bench_input.write_release(%r, %d, distinct_per_class=%d, val_per_class=%d, "
            "test_per_class=%d); print('release_s', time.time() - t)"
            % (REPO, here, root, self.train_images, 1 if self.quick else 4,
               self.val_per_class, self.test_per_class))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    self._release = (proc, os.path.join(root, "CUB_200_2011"), os.path.join(root, "metadata"),
                     time.perf_counter())

  def release(self):
    """(cub_root, metadata_root) of the release, once written."""
    proc, cub, metadata, t0 = self._release
    if proc.returncode is None:
      out, _ = proc.communicate()
      self.results["input"]["release_wait_s"] = round(time.perf_counter() - t0, 1)
      for line in out.splitlines():
        if line.startswith("release_s "):
          self.results["input"]["release_s"] = round(float(line.split()[1]), 1)
      if proc.returncode != 0:
        self.results["input"]["release_log_tail"] = out[-2000:]
    if proc.returncode != 0:
      raise RuntimeError(f"writing the release failed (exit {proc.returncode}): see "
                         "input.release_log_tail")
    return cub, metadata

  def input_item(self):
    def fn():
      cub, metadata = self.release()
      cpus = pipeline.available_cpus()
      m = bench_input.measure(cub, metadata, self.input_workers, batch=self.batch,
                              decode_images=32 if self.quick else 200,
                              thread_counts=[] if self.quick or cpus <= 5 else [cpus - 1])
      m["pipeline"] = {str(k): v for k, v in m["pipeline"].items()}
      m["threads"] = {str(k): v for k, v in m["threads"].items()}
      m["auto_workers"] = pipeline.auto_workers("gpu", m["cpus"])
      self.results["input"].update(m)
      self.results["input"]["status"] = "ok"
    self.run_item(f"input pipeline workers {','.join(map(str, self.input_workers))}",
                  15.0 if self.quick else 60.0, fn)
    self.results["input"].setdefault("status", self.results["log"][-1]["status"])
    self.write()

  def metrics_item(self):
    """Host scoring rate (images/s) of the evaluators, in `evaluation.host_threads()`
    threads as evaluation runs them: boxes at the val and test threshold steps, PxAP."""
    def fn():
      import concurrent.futures  # pylint: disable=g-import-not-at-top
      import cv2  # pylint: disable=g-import-not-at-top
      n, s = (16 if self.quick else 128), self.size
      rng = np.random.default_rng(0)
      low = rng.random((n, 7, 7)).astype(np.float32)
      maps = np.stack([cv2.resize(m, (s, s), interpolation=cv2.INTER_LINEAR) for m in low])
      maps = np.clip(maps, 0, 1)
      records = [ImageRecord(i, f"{i}", "", 0, 500, 375,
                             boxes=np.array([[100, 80, 300, 260]], np.float32)) for i in range(n)]
      masks = (maps > 0.5, np.zeros_like(maps, bool))
      idx = np.arange(n)
      config = config_lib.base_config()
      with concurrent.futures.ThreadPoolExecutor(evaluation.host_threads()) as pool:
        for name, make in (
            ("boxes, val step", lambda: BoxEvaluator(records, s, config.eval.val_interval)),
            ("boxes, test step", lambda: BoxEvaluator(records, s, config.eval.test_interval)),
            ("PxAP, test step", lambda: MaskEvaluator(lambda i: (masks[0][i], masks[1][i]), s,
                                                      config.eval.test_interval))):
          ev = make()
          t = time.perf_counter()
          for lo in range(0, n, 32):
            ev.update(maps[lo:lo + 32], idx[lo:lo + 32], pool=pool)
          self.results["metrics"].append({"evaluator": name, "images": n,
                                          "threads": evaluation.host_threads(),
                                          "images_per_s": n / (time.perf_counter() - t)})
    self.run_item("host evaluators", 10.0, fn)
    self.write()

  # -- end to end

  def e2e_item(self):
    """The CUB recipe as a user runs it, on the generated release, in subprocesses."""
    e2e = self.results["e2e"]
    backbone = self.main_backbone
    arg = f"{backbone},cam"
    firsts = {}  # the first call of each stage's step (fp32 preferred): what it compiles
    for r in self.results["steps"]:
      if r.get("backbone") == backbone and r.get("status") == "ok":
        if r["stage"] not in firsts or r["precision"] == "fp32":
          firsts[r["stage"]] = r["first_call_s"]
    default = 30.0 if self.quick else 75.0
    compile_guess = firsts.get("stage1", default) + firsts.get("stage2", default)
    estimate = 1.5 * compile_guess + (20.0 if self.quick else 60.0)

    def fn():
      cub, _ = self.release()
      root = os.path.join(self.workdir, "e2e")
      metadata = os.path.join(root, "metadata")
      workdir = os.path.join(root, "run")
      path = [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
      # Every program cached (none left out for compiling fast, which varies with the load)
      # and each read from the cache logged: which of the steps timed here main reuses.
      env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
             "PYTHONPATH": os.pathsep.join(path), "JAX_LOG_COMPILES": "1",
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
      deadline = self.t0 + self.budget

      def run(name, args):
        timeout = max(10.0, deadline - time.perf_counter())
        t = time.perf_counter()
        cmd = [sys.executable, "-m", *args]
        e2e.setdefault("commands", []).append(" ".join(cmd))
        try:
          p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=timeout)
        except subprocess.TimeoutExpired as e:
          e2e[f"{name}_s"] = round(time.perf_counter() - t, 1)
          tail = (e.stderr or b"")[-3000:]
          if isinstance(tail, bytes):
            tail = tail.decode(errors="replace")
          e2e[f"{name}_log_tail"] = tail
          raise TimeoutError(f"{name} stopped at the budget ({timeout:.0f}s)") from None
        e2e[f"{name}_s"] = round(time.perf_counter() - t, 1)
        if name == "main":
          e2e["main_cache_hits"] = sorted(set(_CACHE_HIT.findall(p.stderr)))
        if p.returncode != 0:
          e2e[f"{name}_log_tail"] = (p.stdout[-1500:] + p.stderr[-3000:])
          raise RuntimeError(f"{name} exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
        return p.stdout
      run("prepare_cub", ["fcam_jax.data.prepare_cub", f"--cub_root={cub}", f"--out={metadata}",
                          f"--val_per_class={self.val_per_class}"])
      entries = self.cache_entries()
      config = self.config(backbone, "fp32")
      args = ["fcam_jax.main", f"--config=configs/cub.py:{arg}", f"--workdir={workdir}",
              f"--config.dataset.data_root={os.path.join(cub, 'images')}",
              f"--config.dataset.metadata_root={metadata}",
              f"--config.model.num_classes={self.classes}",
              f"--config.stage1.epochs={self.e2e_epochs}",
              f"--config.stage2.epochs={self.e2e_epochs}",
              f"--config.compilation_cache={self.cache_dir}"]
      if self.quick:
        args += [f"--config.data.resize_size={config.data.resize_size}",
                 f"--config.data.crop_size={config.data.crop_size}",
                 f"--config.data.eval_size={config.data.eval_size}",
                 f"--config.stage1.batch_size={self.batch}",
                 f"--config.stage2.batch_size={self.batch}",
                 f"--config.eval.batch_size={self.batch}", "--config.eval.num_figures=2",
                 "--config.eval.test_interval=0.01"]
      run("main", args)
      e2e["new_compilation_cache_entries"] = len(self.cache_entries() - entries)
      hits = set(e2e.pop("main_cache_hits"))
      e2e["main_cache_hits"] = len(hits)
      e2e["steps_from_cache"] = sorted(
          f"{r['stage']} {r['precision']} {r['parallel']}" for r in self.results["steps"]
          if r.get("backbone") == backbone and hits & set(r.get("cache_entries", ())))
      with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
      e2e["wall_time_s"] = results.get("wall_time_s")
      e2e["platform"] = results.get("platform")
      for stage in ("stage1", "stage2"):
        s = results.get(stage, {})
        e2e[stage] = {"test": {name: {k: v for k, v in m.items()
                                      if k in ("MaxBoxAcc", "MaxBoxAccV2", "top1_loc",
                                               "top1_cls", "num_images")}
                               for name, m in s.get("test", {}).items()},
                      "steps_per_epoch": s.get("steps_per_epoch"),
                      "best_epoch": s.get("best_epoch")}
      e2e["train_images"] = results["stage1"]["steps_per_epoch"] * self.batch
      report = run("report", ["fcam_jax.report", workdir, f"--out={os.path.join(root, 'report')}"])
      e2e["report_lines"] = len(report.splitlines())
      e2e["report_head"] = report[:600]
      e2e["status"] = "ok"
    self.run_item(f"CUB recipe end to end ({arg}, {self.e2e_epochs}+{self.e2e_epochs} epochs)",
                  estimate, fn)
    e2e.setdefault("status", self.results["log"][-1]["status"])
    self.write()

  # -- projection and targets

  def _rate(self, section: str, value: str, **match) -> Optional[float]:
    for r in self.results[section]:
      if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items()):
        return r.get(value)
    return None

  def project(self):
    """Projected wall time of the recipes (ResNet50 or the main backbone, batch 32)."""
    b, out = self.main_backbone, {}
    inp = self.results["input"]
    pipes = inp.get("pipeline") or {}
    input_rate = max((p["images_per_s"] for p in pipes.values()), default=None)
    start = 0.0
    if pipes:  # the auto worker count's start, else the most workers measured
      auto = pipes.get(str(inp.get("auto_workers")))
      start = (auto or pipes[str(max(map(int, pipes)))])["first_batch_s"]
    metric = {r["evaluator"]: r["images_per_s"] for r in self.results["metrics"]}
    for precision in self.precisions:
      r1 = self._rate("steps", "images_per_s", backbone=b, stage="stage1", precision=precision,
                      parallel=DEFAULT_PARALLEL)
      r2 = self._rate("steps", "images_per_s", backbone=b, stage="stage2", precision=precision,
                      parallel=DEFAULT_PARALLEL)
      c1 = self._rate("steps", "compile_s", backbone=b, stage="stage1", precision=precision,
                      parallel=DEFAULT_PARALLEL) or 0.0
      c2 = self._rate("steps", "compile_s", backbone=b, stage="stage2", precision=precision,
                      parallel=DEFAULT_PARALLEL) or 0.0
      cam = self._rate("inference", "maps_per_s", backbone=b, method="gradcam",
                       precision=precision)
      fcam = self._rate("inference", "maps_per_s", backbone=b, method="fcam",
                        precision=precision)
      if None in (r1, r2, cam, fcam):
        out[precision] = {"status": "not enough measured (a step or inference rate is missing)"}
        continue
      both = 1 / (1 / cam + 1 / fcam)  # stage-2 test: the CAM and the F-CAM of each image
      for recipe, r in RECIPES.items():
        box_val = metric.get("PxAP, test step" if r["masks"] else "boxes, val step")
        box_test = metric.get("PxAP, test step" if r["masks"] else "boxes, test step")

        def rate(*rates):
          return min(x for x in rates if x)
        stages = {}
        for name, step_rate, epochs, val_maps, test_maps, test_scored, compile_s in (
            ("stage1", r1, r["epochs"][0], cam, cam, 1, c1),
            ("stage2", r2, r["epochs"][1], fcam, both, 2, c2)):
          train = epochs * (r["train"] // 32) * 32 / rate(step_rate, input_rate)
          val = (epochs + 1) * r["val"] / rate(val_maps, input_rate, box_val)
          test = r["test"] / rate(test_maps, input_rate, box_test and box_test / test_scored)
          starts = (2 * epochs + 2) * start
          stages[name] = {"train_s": train, "val_s": val, "test_s": test,
                          "pipeline_starts_s": starts, "compile_s": compile_s,
                          "total_s": train + val + test + starts + compile_s}
        stages["total_s"] = stages["stage1"]["total_s"] + stages["stage2"]["total_s"]
        out.setdefault(precision, {})[recipe] = stages
    out["formula"] = (
        "per stage: E * floor(N_train / 32) * 32 / min(step rate, input rate) "
        "+ (E + 1) * N_val / min(val maps rate, input rate, host scoring rate at the val step) "
        "+ N_test / min(test maps rate, input rate, host scoring rate at the test step / maps "
        "scored per image) + (2E + 2) * pipeline start + the step's compile time; maps rates: "
        "stage 1 GradCAM (CAM costs the same forward pass), stage-2 val F-CAM, stage-2 test "
        "1 / (1/GradCAM + 1/F-CAM) (the CAM and the F-CAM of each image); input rate: the best "
        "measured data.num_workers; pipeline start: the first-batch time with the auto worker "
        "count. Batch 32, ResNet50 (or the --quick backbone), the measured rates of this run.")
    per_worker = inp.get("decode_per_cpu_second")
    if per_worker:  # the workers the measured step rates need (the auto rule's question)
      need = {}
      for r in self.results["steps"]:
        if r.get("status") == "ok" and r["backbone"] == b and r["parallel"] == DEFAULT_PARALLEL:
          need[f"{b} {r['stage']} {r['precision']} ({r['images_per_s']:.0f} images/s)"] = (
              bench_input.workers_needed(r["images_per_s"], per_worker))
      out["workers_needed"] = need
    out["input_rate"] = input_rate
    out["pipeline_start_s"] = start
    self.results["projection"] = out

  def targets(self):
    b, rows = self.main_backbone, []

    def add(figure, key, measured, where):
      op, value, unit = TARGETS[key]
      if measured is None:
        status = "not measured"
      elif self.quick or b != "resnet50":
        status = "n/a (not the target's sizes)"
      else:
        met = {"<": measured < value, "<=": measured <= value, ">=": measured >= value}[op]
        status = "met" if met else "MISSED"
      rows.append({"figure": figure, "target": f"{op} {value:g} {unit}",
                   "measured": measured, "unit": unit, "status": status, "where": where})
    add(f"stage-1 step {b} bf16 b{self.batch}", "stage1_bf16",
        self._rate("steps", "images_per_s", backbone=b, stage="stage1", precision="bf16",
                   parallel=DEFAULT_PARALLEL), "steps")
    for precision in self.precisions:
      add(f"stage-2 step {b} {precision} b{self.batch}", "stage2",
          self._rate("steps", "images_per_s", backbone=b, stage="stage2", precision=precision,
                     parallel=DEFAULT_PARALLEL), "steps")
    add(f"CRF loss + grad b{self.batch}x{self.size} grid_cell 0.5 (default)", "crf_default",
        self._rate("crf", "ms", grid_cell=0.5), "crf")
    add(f"F-CAM inference {b} bf16 b{self.infer_batch}", "fcam_bf16",
        self._rate("inference", "maps_per_s", backbone=b, method="fcam", precision="bf16"),
        "inference")
    for precision in self.precisions:
      p = self.results["projection"].get(precision, {}).get("CUB")
      add(f"CUB stage 2 projected ({b}, 50 epochs, {precision})", "cub_stage2_projected",
          p["stage2"]["total_s"] if p else None, "projection")
    self.results["targets"] = rows

  # -- the table

  def table(self) -> str:
    m, res = self.results["machine"], self.results
    lines = ["| section | item | measured | target | status |", "|---|---|---|---|---|"]

    def row(*cells):
      lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    row("machine", "devices", m["devices"], "", "")
    row("machine", "GPU (nvidia-smi)", m["gpu"] or "-", "", "")
    row("machine", "CPU", f"{m['cpu']}, {m['cpus']} CPUs", "", "")
    row("machine", "software", f"jax {m['jax']}, jaxlib {m['jaxlib']}, Python {m['python']}",
        "", "")
    row("machine", "device memory limit", _gib(m["device_memory_limit"]), "", "")
    target_of = {}
    for t in res["targets"]:
      target_of.setdefault(t["where"], []).append(t)

    def target_for(where, figure_prefix):
      for t in target_of.get(where, []):
        if t["figure"].startswith(figure_prefix):
          return t["target"], t["status"]
      return "", ""
    for section, r in [("step", r) for r in res["steps"]] + [("parallel", r)
                                                             for r in res["parallel"]]:
      item = f"{r['backbone']} {r['stage']} {r['precision']} {r['parallel']} b{r['batch']}"
      if r.get("status") == "ok":
        text = (f"{_fmt_rate(r['images_per_s'])} images/s ({r['ms_per_step']:.1f} ms/step); "
                f"compile {r['compile_s']:.1f} s")
      else:
        text = r.get("status", "?")
      tgt, st = "", ""
      if (section == "step" and r["backbone"] == self.main_backbone
          and r["parallel"] == DEFAULT_PARALLEL):
        if r["stage"] == "stage2":
          tgt, st = target_for("steps", f"stage-2 step {r['backbone']} {r['precision']}")
        elif r["precision"] == "bf16":
          tgt, st = target_for("steps", f"stage-1 step {r['backbone']} bf16")
      row(section, item, text, tgt, st)
    for r in res["max_batch"]:
      item = f"{r['backbone']} {r['stage']} {r['precision']}"
      text = f"largest fitting {r['largest_fitting']}"
      if r.get("first_oom"):
        text += f", {r['first_oom']} out of memory"
      if r.get("peak_bytes"):
        text += f"; peak {_gib(r['peak_bytes'])}"
      if r.get("fits"):
        best = max(r["fits"], key=lambda f: f["images_per_s"])
        text += f"; best {_fmt_rate(best['images_per_s'])} images/s at b{best['batch']}"
      row("max batch", item, text, "", r["status"])
    for r in res["inference"]:
      method = "F-CAM" if r["method"] == "fcam" else "GradCAM"
      item = f"{r['backbone']} {method} {r['precision']} b{r['batch']}"
      text = (f"{_fmt_rate(r['maps_per_s'])} maps/s; compile {r['compile_s']:.1f} s"
              if r.get("status") == "ok" else r.get("status"))
      tgt, st = ("", "")
      if r["method"] == "fcam" and r["precision"] == "bf16" and r["backbone"] == self.main_backbone:
        tgt, st = target_for("inference", "F-CAM")
      row("inference", item, text, tgt, st)
    for r in res["crf"]:
      item = f"loss + grad b{r['batch']}x{r['size']}x{r['size']}x2, grid_cell {r['grid_cell']}"
      text = (f"{r['ms']:.2f} ms; compile {r['compile_s']:.1f} s" if r.get("status") == "ok"
              else r.get("status"))
      tgt, st = target_for("crf", "CRF") if r["grid_cell"] == 0.5 else ("", "")
      row("CRF", item, text, tgt, st)
    inp = res["input"]
    few = " (--quick: too few batches for a steady state)" if self.quick else ""
    if inp.get("status") == "ok":
      for w, p in inp["pipeline"].items():
        row("input", f"data.num_workers={w}{' (threads)' if w == '0' else ''}, b{inp['batch']}",
            f"{p['images_per_s']:.0f} images/s{few}; first batch {p['first_batch_s']:.1f} s",
            "", "")
      for n, p in inp.get("threads", {}).items():
        row("input", f"data.num_workers=0, read_threads={n}, b{inp['batch']}",
            f"{p['images_per_s']:.0f} images/s; first batch {p['first_batch_s']:.1f} s", "", "")
      row("input", "one thread, read + decode + transform alone",
          f"{inp['decode_per_process']:.0f} images/s, {inp['decode_per_cpu_second']:.0f} per "
          f"CPU-second; data.num_workers=-1 on an accelerator with these CPUs: "
          f"{inp['auto_workers']} workers", "", "")
      for figure, n in res["projection"].get("workers_needed", {}).items():
        row("input", f"worker processes to feed {figure}", f"{n} (at the per-CPU-second rate)",
            "", "")
    else:
      row("input", "pipeline", inp.get("status", "not run"), "", "")
    for r in res["metrics"]:
      row("host", f"evaluator: {r['evaluator']}",
          f"{r['images_per_s']:.0f} images/s ({r['threads']} threads)", "", "")
    e2e = res["e2e"]
    if e2e.get("status") == "ok":
      s1 = e2e["stage1"]["test"].get("cam", {})
      s2 = e2e["stage2"]["test"].get("fcam", {})
      row("end to end", f"CUB recipe {self.main_backbone},cam, {self.e2e_epochs}+{self.e2e_epochs}"
          f" epochs, {e2e['train_images']} train images",
          f"main {e2e['main_s']:.0f} s (train_and_evaluate {e2e['wall_time_s']:.0f} s), "
          f"prepare_cub {e2e['prepare_cub_s']:.1f} s, report {e2e['report_s']:.1f} s; test "
          f"MaxBoxAcc CAM {s1.get('MaxBoxAcc', float('nan')):.1f}, F-CAM "
          f"{s2.get('MaxBoxAcc', float('nan')):.1f}; {e2e['new_compilation_cache_entries']} "
          f"programs compiled anew, {e2e['main_cache_hits']} from the cache (steps timed here: "
          f"{', '.join(e2e['steps_from_cache']) or 'none'})", "", "ok")
    else:
      row("end to end", "CUB recipe", e2e.get("status", "not run"), "", "")
    proj = res["projection"]
    for precision in self.precisions:
      p = proj.get(precision, {})
      for recipe in RECIPES:
        if recipe not in p:
          row("projection", f"{recipe} {precision}", p.get("status", "-"), "", "")
          continue
        s = p[recipe]
        tgt, st = (target_for("projection", f"CUB stage 2 projected ({self.main_backbone}, 50 "
                              f"epochs, {precision})") if recipe == "CUB" else ("", ""))
        row("projection", f"{recipe} {precision} ({self.main_backbone}, recipe epochs)",
            f"stage 1 {s['stage1']['total_s'] / 60:.1f} min, stage 2 "
            f"{s['stage2']['total_s'] / 60:.1f} min (train {s['stage2']['train_s'] / 60:.1f}, "
            f"val {s['stage2']['val_s'] / 60:.1f}, test {s['stage2']['test_s'] / 60:.1f}), "
            f"total {s['total_s'] / 60:.1f} min", tgt if recipe == "CUB" else "", st)
    skipped = [e["item"] for e in res["log"] if e["status"] == SKIPPED]
    stopped = [f"{e['item']}: {e['status']}" for e in res["log"] if "hard limit" in e["status"]]
    row("run", "wall time", f"{self.elapsed():.0f} s of a {self.budget:.0f} s budget; "
        f"{len(skipped)} items skipped (budget)" + "".join(f"; {x}" for x in stopped), "", "")
    failed = [e["item"] for e in res["log"] if e["status"].startswith("error")]
    if failed:
      row("run", "failed items (see log in the JSON)", "; ".join(failed), "", "")
    return "\n".join(lines)


GROUPS = ("steps", "crf", "inference", "input", "e2e", "parallel", "max_batch")


def plan(check: Check, skip=()):
  """The items in priority order: the recipe's stage-2 step (F-CAM's cost) and the targets'
  figures, then what completes the bf16 projection, the input and the end-to-end run
  (the real path on the device), what completes the fp32 one, the jit backend, the
  largest batches, the other backbones. `skip`: groups of GROUPS left out."""
  main, precisions = check.main_backbone, check.precisions
  fast = "bf16" if "bf16" in precisions else precisions[0]
  slow = [p for p in precisions if p != fast]
  first = "fp32" if "fp32" in precisions else precisions[0]  # the recipe's default
  on = lambda group: group not in skip  # noqa: E731
  if on("input") or on("e2e"):
    check.start_release()
  if on("steps"):
    for precision in [first] + [p for p in precisions if p != first]:
      profile = _PROFILE.value if precision == _PROFILE_PRECISION.value else ""
      check.step_item(main, precision, "stage2", profile_dir=profile)
    check.step_item(main, fast, "stage1")
  if on("crf"):
    for cell in (0.5, 1.0):
      check.crf_item(cell)
  if on("inference"):
    check.inference_item(main, fast, "fcam")
    check.inference_item(main, fast, "gradcam")
  if on("input"):
    check.input_item()
    check.metrics_item()
  if on("e2e"):
    check.e2e_item()
  for precision in slow:
    if on("steps"):
      check.step_item(main, precision, "stage1")
    if on("inference"):
      check.inference_item(main, precision, "fcam")
      check.inference_item(main, precision, "gradcam")
  if on("parallel"):
    default = [r for r in check.results["steps"] if r["backbone"] == main
               and r["stage"] == "stage2" and r["precision"] == first
               and r["parallel"] == DEFAULT_PARALLEL]
    check.results["parallel"].extend(dict(r) for r in default)  # the table compares both
    check.step_item(main, first, "stage2", parallel=OTHER_PARALLEL, section="parallel")
  if on("max_batch"):
    check.max_batch_item(main, "stage2", first)
    if not check.quick:
      check.max_batch_item(main, "stage1", first)
  for backbone in check.backbones[1:]:
    for precision in [fast] + slow:
      if on("steps"):
        check.step_item(backbone, precision, "stage2")
        check.step_item(backbone, precision, "stage1")
      if on("inference"):
        check.inference_item(backbone, precision, "fcam")
        check.inference_item(backbone, precision, "gradcam")
  if on("max_batch"):
    for backbone in check.backbones[1:]:
      check.max_batch_item(backbone, "stage2", first)


def finish(check: Check, lock: threading.Lock, note: str = "") -> bool:
  """Projection, targets, the table: written and printed once (False if done already)."""
  if not lock.acquire(blocking=False):
    return False
  if note:
    check.results["log"].append({"item": check.current or "(between items)", "status": note})
  release = check._release  # pylint: disable=protected-access
  if release is not None and release[0].poll() is None:
    release[0].kill()
  check.project()
  check.targets()
  check.results["table"] = check.table()
  check.write()
  print()
  print(check.results["table"])
  print()
  print("Projection:", check.results["projection"]["formula"], flush=True)
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # orbax warns at every read-only checkpoint open
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="accelerator_check_")
  os.makedirs(workdir, exist_ok=True)
  check = Check(os.path.abspath(_OUT.value), _BUDGET.value, _QUICK.value, workdir)
  shutil.rmtree(check.cache_dir, ignore_errors=True)  # compile times are measured
  devices.enable_compilation_cache(check.cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program
  print(f"accelerator check: {check.results['machine']['devices']}; budget "
        f"{check.budget:.0f} s; results -> {check.out}", flush=True)
  check.write()
  lock = threading.Lock()
  hard = _HARD_LIMIT.value or check.budget + 45

  def stop():  # an item ran far past its estimate: keep what was measured
    note = f"stopped at the hard limit ({hard:.0f} s)"
    try:
      done = finish(check, lock, note)
    except Exception:  # pylint: disable=broad-except
      traceback.print_exc()
      done = True
    if done:
      sys.stdout.flush()
      os._exit(3)  # pylint: disable=protected-access
  watchdog = threading.Timer(max(0.0, hard - check.elapsed()), stop)
  watchdog.daemon = True
  watchdog.start()
  try:
    unknown = set(_SKIP.value) - set(GROUPS)
    if unknown:
      raise app.UsageError(f"--skip: unknown groups {sorted(unknown)}; groups: {GROUPS}")
    check.results["settings"]["skip"] = list(_SKIP.value)
    plan(check, skip=tuple(_SKIP.value))
  finally:
    watchdog.cancel()
    finish(check, lock)
    if not _WORKDIR.value:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
