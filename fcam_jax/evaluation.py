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
