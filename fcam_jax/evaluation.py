"""Scores a split's maps with the WSOL evaluators, keeping the device and the host busy.

The device computes batch b + 1 while the host scores batch b (JAX dispatches
asynchronously; only the scored batch is pulled to the host), and the host scores the
images of a batch in parallel threads (OpenCV and numpy release the GIL). The counts
are integer sums, so the metrics do not depend on the order.
"""

import concurrent.futures
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Tuple

import jax
from jax.experimental import multihost_utils
import numpy as np

from fcam_jax import files
from fcam_jax import metrics as metrics_lib
from fcam_jax import parallel as parallel_lib
from fcam_jax import writers
from fcam_jax.data import pipeline
from fcam_jax.data import sources


@dataclasses.dataclass(frozen=True)
class MapFunction:
  """A compiled `fn(variables, batch, rng) -> {'logits': (B, K), name: (B, S, S), ...}` (per
  example, see `DataParallel.per_example`) and the names of the maps it returns to score."""
  fn: Callable
  names: Tuple[str, ...]


def make_evaluators(split: sources.Split, config, interval: float) -> List:
  """Box metrics where the split has boxes, mask metrics (PxAP) where it has masks."""
  evaluators = []
  if split.has_boxes:
    evaluators.append(metrics_lib.BoxEvaluator(
        split.records, map_size=config.data.eval_size, cam_curve_interval=interval,
        iou_thresholds=tuple(config.eval.iou_thresholds)))
  if split.mask_loader is not None:
    evaluators.append(metrics_lib.MaskEvaluator(
        split.mask_loader, map_size=config.data.eval_size, cam_curve_interval=interval,
        records=split.records))
  return evaluators


def host_threads() -> int:
  """Threads scoring maps on the host: the machine's cores, at most 16."""
  return max(1, min(16, os.cpu_count() or 1))


def evaluate(maps: MapFunction, variables, split: sources.Split, config, interval: float,
             rng: jax.Array, *, parallel: parallel_lib.DataParallel,
             observe: Optional[Callable] = None, label: str = "") -> Dict[str, Dict]:
  """{name: metrics} of the maps `maps.fn(variables, batch, rng)` gives on `split`.

  Padding entries (mask 0) are dropped on the host, so every image counts once (over
  all processes: each scores its share, the counts are summed). `observe(batch, {name:
  maps})`, if given, sees every batch's valid entries and the maps scored (e.g. a
  figures.TestRecorder). Progress is logged as `label`.
  """
  evaluators = {n: make_evaluators(split, config, interval) for n in maps.names}
  local_batch = config.eval.batch_size // jax.process_count()
  rngs = parallel.keys(rng)
  progress = writers.EvalProgress(
      label or split.name, pipeline.num_eval_batches(len(split), local_batch, jax.process_count()))
  done = {"batches": 0, "images": 0}

  def score(batch, out, pool):
    out = parallel.unshard(out)  # waits for this batch only
    valid = batch["mask"]
    logits = out["logits"][valid]
    scored = {name: out[name][valid] for name in maps.names}
    for name, m in scored.items():
      for ev in evaluators[name]:
        ev.update(m, batch["index"][valid], logits, pool=pool)
    if observe is not None:
      observe({k: v[valid] for k, v in batch.items()}, scored)
    done["batches"] += 1
    done["images"] += int(valid.sum())
    progress(done["batches"], done["images"])

  batches = pipeline.eval_batches(split, config, local_batch=local_batch,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
  with concurrent.futures.ThreadPoolExecutor(host_threads()) as pool:
    pending = None
    for batch in batches:
      out = maps.fn(variables, parallel.shard(batch), rngs)  # dispatched, not awaited
      if pending is not None:
        score(*pending, pool)
      pending = (batch, out)
    if pending is not None:
      score(*pending, pool)
  return {name: _merge(evaluators[name]) for name in maps.names}


def _merge(evaluators: List) -> Dict:
  """The evaluators' metrics, their counts summed over processes first."""
  merged = {}
  for ev in evaluators:
    if jax.process_count() > 1:  # each process saw its shard
      gathered = multihost_utils.process_allgather(ev.state())
      ev.reset()
      ev.merge_state({k: np.asarray(v).sum(0) for k, v in gathered.items()})
    merged.update(ev.compute())
  return merged


def scalars(metrics: Dict) -> Dict[str, float]:
  """The scalar entries of a metrics dict (not the curves), as floats."""
  return {k: float(v) for k, v in metrics.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


class ScoremapWriter:
  """An `evaluate` observer saving every scored map as wsolevaluation's evaluation.py
  loads them: `<root>/<map name>/<image id>.npy` (`a/b.jpg` -> `a/b.jpg.npy`), float32 in [0, 1] at the size
  scored (config.data.eval_size), written in threads, each file atomically.

  With several processes each writes the images of its own shard (every image once).
  `finish()` (or `close()`) waits for the writes and raises the first error.
  """

  def __init__(self, root: str, records, names, map_size: int, threads: int = 4):
    self.root = root
    self.records = records
    self.map_size = int(map_size)
    self.folders = {name: os.path.join(root, name) for name in names}
    self._pool = concurrent.futures.ThreadPoolExecutor(threads)
    self._pending = []

  @classmethod
  def for_stage(cls, config, stage_dir: str, split: sources.Split, names
                ) -> Optional["ScoremapWriter"]:
    """The writer of a stage's test maps (`<stage_dir>/scoremaps/`), or None unless
    `config.eval.save_scoremaps`."""
    if not config.eval.get("save_scoremaps", False):
      return None
    return cls(os.path.join(stage_dir, "scoremaps"), split.records, names,
               config.data.eval_size)

  def path(self, name: str, image_id: str) -> str:
    folder = self.folders[name]
    path = os.path.normpath(os.path.join(folder, image_id + ".npy"))
    if not path.startswith(os.path.normpath(folder) + os.sep):
      raise ValueError(f"image id {image_id!r} escapes the score-map folder {folder}")
    return path

  def _write(self, path: str, scoremap: np.ndarray):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.save_npy(path, scoremap)

  def __call__(self, batch, maps):
    indices = np.asarray(batch["index"])
    for name, folder_maps in maps.items():
      if name not in self.folders:
        continue
      # Clipping changes no metric: uint8(x * 255) and the PxAP bins are the same for
      # the float32 rounding a hair outside [0, 1] that interpolation can give.
      values = np.clip(np.asarray(folder_maps, np.float32), 0.0, 1.0)
      for i, scoremap in zip(indices, values):
        path = self.path(name, self.records[int(i)].image_id)
        self._pending.append(self._pool.submit(self._write, path, scoremap))
    if len(self._pending) > 256:  # bound the maps held in memory
      self._drain(keep=64)

  def _drain(self, keep: int = 0):
    while len(self._pending) > keep:
      self._pending.pop(0).result()

  def close(self):
    try:
      self._drain()
    finally:
      self._pool.shutdown(wait=True)

  def finish(self, relative_to: str) -> Dict:
    """Closes; the stage results' entry: the map size and the folders (relative paths)."""
    self.close()
    return {"map_size": self.map_size, "folders": {
        name: os.path.relpath(folder, relative_to) for name, folder in self.folders.items()}}


def observers(*fns: Optional[Callable]) -> Callable:
  """One `observe` calling each of `fns` (None entries skipped) in turn."""
  fns = [f for f in fns if f is not None]

  def observe(batch, maps):
    for fn in fns:
      fn(batch, maps)
  return observe
