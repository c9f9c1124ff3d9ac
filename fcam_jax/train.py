"""train_and_evaluate(config, workdir): stage 1 (the WSOL classifier), then stage 2 (F-CAM).

Each stage runs `loop.run_stage` (train, validate, checkpoint, resume, test, figures);
this module loads the data once, runs the stages `config.stages` names and writes
`<workdir>/results.json` (the stages' results with the config, the package versions
and the git commit) and `<workdir>/summary.md`.
"""

import importlib.metadata
import os
import platform
import subprocess
import time
from typing import Dict

from absl import logging
import jax
import ml_collections

from fcam_jax import config_lib
from fcam_jax import devices
from fcam_jax import figures
from fcam_jax import files
from fcam_jax import loop
from fcam_jax import metrics
from fcam_jax import parallel as parallel_lib
from fcam_jax import stage1
from fcam_jax import stage2
from fcam_jax import writers
from fcam_jax.data import sources

NonFiniteError = loop.NonFiniteError
Preempted = loop.Preempted

_PACKAGES = ("fcam_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain",
             "tensorflow-datasets", "opencv-python-headless", "clu", "ml-collections")


def versions() -> Dict[str, str]:
  out = {"python": platform.python_version()}
  for pkg in _PACKAGES:
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = "not installed"
  return out


def git_commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _write_summary(results: Dict, workdir: str, writer):
  """The test metrics as a table: logged, printed, in `<workdir>/summary.md` and the writer."""
  table = figures.summary_table(results)
  if jax.process_index() == 0:
    logging.info("test results:\n%s", table)
    print(table, flush=True)
    files.write_atomic(os.path.join(workdir, "summary.md"), table)
  writer.write_texts(0, {"summary": table})


def check_batch_sizes(config):
  """Every batch must split evenly over all devices (and the eval batch over processes)."""
  n = jax.device_count()
  for key in ("stage1.batch_size", "stage2.batch_size", "eval.batch_size"):
    size = config_lib.get(config, key)
    if size % n:
      raise config_lib.ConfigError(f"config.{key}={size} does not split over {n} devices: "
                                   f"use a multiple of {n}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Runs the stages named by `config.stages`; writes and returns `results.json`."""
  config_lib.validate(config)
  check_batch_sizes(config)
  files.check_writable(workdir, "workdir")
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "config.json"), config.to_dict())  # predict, sweep
  cache = devices.enable_compilation_cache(config.get("compilation_cache", ""))
  if cache:
    logging.info("XLA compilation cache: %s", cache)
  writer = writers.create_writer(workdir, jax.process_index())
  writer.write_hparams(dict(config_lib.flatten(config.to_dict())))
  t0 = time.time()
  parallel = parallel_lib.DataParallel(config.parallel,
                                       parallel_lib.compiler_options(config.cpu_ynnpack))
  splits = sources.load_splits(config)
  sources.skip_log(splits).write(os.path.join(
      workdir, "skipped_files.json" if jax.process_index() == 0
      else f"skipped_files.{jax.process_index()}.json"))
  logging.info("data: %s", {k: len(v) for k, v in splits.items()})
  run = loop.Run(config=config, workdir=workdir, splits=splits, writer=writer, parallel=parallel)
  results = {"config": config.to_dict(), "versions": versions(), "git_commit": git_commit(),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "platform": devices.describe(),
             "metric_definitions": metrics.__doc__,
             "thresholds": {"val_interval": config.eval.val_interval,
                            "test_interval": config.eval.test_interval,
                            "iou_thresholds": list(config.eval.iou_thresholds)}}
  try:
    if config.stages in ("stage1", "both"):
      results["stage1"] = loop.run_stage(stage1.stage(run), run)
    if config.stages in ("stage2", "both"):
      results["stage2"] = loop.run_stage(stage2.stage(run), run)
    results["wall_time_s"] = time.time() - t0
    if jax.process_index() == 0:
      files.write_json(os.path.join(workdir, "results.json"), results)
    _write_summary(results, workdir, writer)
  finally:  # also when preempted or stopped by a NaN: what was logged is kept
    writer.flush()
    writer.close()
  return results
