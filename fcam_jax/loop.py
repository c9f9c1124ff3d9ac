"""The epoch loop both stages run: train, validate, checkpoint, resume, test, draw.

`run_stage(stage, run)` trains `stage` epoch by epoch, evaluates on val before the
first epoch and after each one, keeps the latest and the best checkpoint (by
`config.eval.selection_metric` on the last map `stage.val` returns), resumes from the
latest when run again, and ends with the best checkpoint evaluated on test, its
figures and `<workdir>/<stage>/results.json`. It knows no stage: a `Stage` says what
to train and how to map.

SIGTERM checkpoints at the next step boundary and raises `Preempted`; a NaN/Inf loss
term or gradient raises `NonFiniteError` before the diverged state is saved. Checkpoints
are written in the background (`config.async_checkpoints`) and every way out of the
stage waits for them; an unreadable latest checkpoint is set aside and the previous one
resumed (docs/faults.md).
"""

import dataclasses
import json
import os
import shutil
import signal
import threading
import time
from typing import Callable, Dict, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from fcam_jax import checkpoint as ckpt_lib
from fcam_jax import config_lib
from fcam_jax import evaluation
from fcam_jax import figures
from fcam_jax import files
from fcam_jax import parallel as parallel_lib
from fcam_jax import steps
from fcam_jax import writers
from fcam_jax.data import pipeline
from fcam_jax.data import sources


class NonFiniteError(RuntimeError):
  """A NaN or Inf loss or gradient; the message names the stage, step and loss term."""


class Preempted(Exception):
  """SIGTERM: a checkpoint was saved at a step boundary; rerunning resumes from it."""


@dataclasses.dataclass
class Stage:
  """What `run_stage` trains and how it maps.

  `train_step(replicated_state, sharded_batch) -> (state, metrics)` is compiled for
  the devices; `variables(replicated_state)` gives the variables `val` / `test` map
  with; `end_of_epoch(replicated_state) -> state` runs after each epoch's steps;
  `summarize(results) -> dict` adds to the stage's results.
  """
  name: str                            # 'stage1' | 'stage2': its folder and metric prefix
  config: ml_collections.ConfigDict    # config.stage1 / config.stage2
  state: steps.TrainState              # the initial state (restored over when resuming)
  train_step: Callable
  variables: Callable
  val: evaluation.MapFunction          # its last map selects the checkpoint
  test: evaluation.MapFunction
  end_of_epoch: Optional[Callable] = None
  summarize: Optional[Callable] = None


@dataclasses.dataclass
class Run:
  """What the stages of one run share."""
  config: ml_collections.ConfigDict
  workdir: str
  splits: Dict[str, sources.Split]
  writer: object
  parallel: parallel_lib.DataParallel


def check_free_space(directory: str, state, copies: int = 3):
  """Fails before training if `directory` cannot hold `copies` checkpoints of `state`
  (the latest, the best and the one being written)."""
  need = copies * sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
  free = shutil.disk_usage(directory).free
  if free < need:
    raise OSError(f"workdir {directory} has {free / 2**20:.0f} MiB free; its checkpoints need "
                  f"about {need / 2**20:.0f} MiB ({copies} x the training state): free some "
                  "space or use another --workdir")


class _MeanMetrics:
  """Averages per-step metrics (pmean'ed, so the same on every device) over an interval,
  and stops at the first step whose metrics are not finite."""

  def __init__(self, stage: str):
    self._stage = stage
    self._items = []

  def add(self, step: int, m):
    self._items.append((step, m))

  def pop(self, parallel: parallel_lib.DataParallel) -> Dict[str, float]:
    items = [(step, parallel.first(m)) for step, m in self._items]  # one host sync per interval
    self._items = []
    for step, m in items:
      bad = {k: float(v) for k, v in m.items() if not np.isfinite(v)}
      if bad:
        raise NonFiniteError(_non_finite_message(self._stage, step, m, bad))
    return {k: float(np.mean([m[k] for _, m in items])) for k in items[0][1]}


# Metric names of the loss terms, for the NaN message (stage 1: cross-entropy).
_TERMS = {"loss": "the total loss", "seeds": "the seed loss (fcam.seeds)",
          "crf": "the CRF loss (fcam.crf)", "size": "the size loss (fcam.size)",
          "grad_norm": "the gradient"}


def _non_finite_message(stage: str, step: int, metrics: Dict, bad: Dict) -> str:
  terms = [k for k in ("seeds", "crf", "size") if k in bad]
  if terms:
    culprit = " and ".join(_TERMS[k] for k in terms)
  elif "loss" in bad:
    culprit = "the cross-entropy loss" if stage == "stage1" else "the total loss"
  elif "grad_norm" in bad:
    culprit = "the gradient (the loss was finite)"
  else:
    culprit = ", ".join(bad)
  values = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
  return (f"{stage}: {culprit} became NaN/Inf at step {step} ({values}). Training stopped "
          "before saving this state: the last checkpoint holds the last good one. Lower the "
          "learning rate or that term's weight, then rerun the same command to resume.")


# The selection score of a checkpoint saved without a finished validation (preemption
# mid-epoch, a crash while validating): below any metric, so never `best`.
_UNVALIDATED = -1.0


class _SigtermFlag:
  """Turns SIGTERM into a request to checkpoint at the next step boundary (one process);
  with several processes, JAX's preemption sync point makes them agree on the step."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the next step boundary")
    self.requested = True

  def __call__(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run_stage(stage: Stage, run: Run) -> Dict:
  """Trains, validates and tests `stage`; returns (and writes) the stage's results."""
  config, parallel, writer, name = run.config, run.parallel, run.writer, stage.name
  stage_dir = os.path.join(run.workdir, name)
  results_path = os.path.join(stage_dir, "results.json")
  if os.path.exists(results_path):
    logging.info("%s already finished: %s", name, results_path)
    with open(results_path) as f:
      return json.load(f)

  train_split = run.splits["train"]
  global_batch = stage.config.batch_size
  if global_batch % jax.device_count():
    raise config_lib.ConfigError(
        f"config.{name}.batch_size={global_batch} does not split over {jax.device_count()} devices")
  steps_per_epoch = pipeline.steps_per_epoch(len(train_split), global_batch)
  total_steps = stage.config.epochs * steps_per_epoch
  selection = config.eval.selection_metric
  eval_rng = jax.random.key(config.seed + 1)

  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "checkpoints"),
                               async_save=config.async_checkpoints)
  check_free_space(stage_dir, stage.state)
  state = stage.state
  found = ckpt.restore_latest(state)  # unreadable steps are set aside (docs/faults.md)
  if found is not None:
    latest, state, meta = found
    logging.info("%s: resuming from step %d (epoch %d)", name, latest, latest // steps_per_epoch)
  else:
    latest, meta = None, {"history": []}

  def validate(replicated_state, epoch: int, step: int) -> float:
    t0 = time.time()
    val = evaluation.evaluate(stage.val, stage.variables(replicated_state), run.splits["val"],
                              config, config.eval.val_interval, eval_rng, parallel=parallel,
                              label=f"{name} val (epoch {epoch})")[stage.val.names[-1]]
    scalars = evaluation.scalars(val)
    if selection not in val:
      raise config_lib.ConfigError(
          f"config.eval.selection_metric={selection!r} is not computed on this dataset; "
          f"available: {', '.join(sorted(scalars))}")
    writer.write_scalars(step, {f"{name}/val/{k}": v for k, v in scalars.items()})
    meta["history"].append({"epoch": epoch, "step": step, **scalars})
    logging.info("%s epoch %d: val %s=%.3f (%.1fs)", name, epoch, selection, val[selection],
                 time.time() - t0)
    return float(val[selection])

  replicated = parallel.replicate(state)
  step = int(state.step)
  if latest is None:  # evaluate the initial model; it competes for `best` too.
    ckpt.save(0, state, meta, validate(replicated, 0, 0))
  elif step % steps_per_epoch == 0 and not any(h["step"] == step for h in meta["history"]):
    # Saved at the end of an epoch whose validation did not finish: validate it now.
    ckpt.save(step, state, meta, validate(replicated, step // steps_per_epoch, step))

  progress = writers.report_progress(total_steps, writer, every_steps=config.log_every_steps)
  train_metrics = _MeanMetrics(name)
  sigterm = _SigtermFlag()
  preempted = False
  try:
    for epoch in range(step // steps_per_epoch, stage.config.epochs):
      epoch_end = (epoch + 1) * steps_per_epoch
      for batch in pipeline.train_batches(
          train_split, config, global_batch=global_batch, epoch=epoch,
          start_step=step - epoch * steps_per_epoch, seed=config.seed,
          process_index=jax.process_index(), process_count=jax.process_count()):
        replicated, m = stage.train_step(replicated, parallel.shard(batch))
        train_metrics.add(step + 1, m)
        step += 1
        progress(step)
        preempted = sigterm(step)
        if step % config.log_every_steps == 0 or step == epoch_end or preempted:
          writer.write_scalars(step, {f"{name}/train/{k}": v
                                      for k, v in train_metrics.pop(parallel).items()})
        if preempted and step < epoch_end:  # the data order and keys resume from `step`
          ckpt.save(step, parallel.unreplicate(replicated), meta, _UNVALIDATED)
          raise Preempted(f"{name}: preempted at step {step}; checkpoint saved in "
                          f"{ckpt.directory}. Rerun the same command to resume.")
      if stage.end_of_epoch is not None:
        replicated = stage.end_of_epoch(replicated)
      try:
        score = validate(replicated, epoch + 1, step)
      except Exception:  # e.g. an unreadable val image: keep the epoch's training
        ckpt.save(step, parallel.unreplicate(replicated), meta, _UNVALIDATED)
        raise
      if ((epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == stage.config.epochs
          or preempted):
        ckpt.save(step, parallel.unreplicate(replicated), meta, score)
      writer.flush()
      if preempted:  # at the end of an epoch: after its validation and checkpoint
        raise Preempted(f"{name}: preempted at step {step} (end of epoch {epoch + 1}); "
                        f"checkpoint saved in {ckpt.directory}. Rerun the same command to resume.")
  except BaseException:  # Preempted, NonFiniteError, a crash: the saves in flight finish
    ckpt.close()
    raise
  finally:
    sigterm.close()

  best = ckpt.best_step()
  best_state, _ = ckpt.restore(best, state)
  best_epoch = best // steps_per_epoch
  logging.info("%s: testing the best checkpoint (step %d, epoch %d)", name, best, best_epoch)
  recorder = figures.TestRecorder(stage.test.names, config.eval.get("num_figures", 8))
  scoremaps = evaluation.ScoremapWriter.for_stage(config, stage_dir, run.splits["test"],
                                                  stage.test.names)  # None unless asked
  test = evaluation.evaluate(stage.test, stage.variables(parallel.replicate(best_state)),
                             run.splits["test"], config, config.eval.test_interval, eval_rng,
                             parallel=parallel, observe=evaluation.observers(recorder, scoremaps),
                             label=f"{name} test")
  for map_name, metrics in test.items():
    writer.write_scalars(step, {f"{name}/test/{map_name}/{k}": v
                                for k, v in evaluation.scalars(metrics).items()})
  ckpt.close()
  out = {"best_step": best, "best_epoch": best_epoch, "steps_per_epoch": steps_per_epoch,
         "selection_metric": selection,
         "val_at_best": next((h for h in meta["history"] if h["step"] == best), None),
         "history": meta["history"], "test": test}
  if scoremaps is not None:
    out["scoremaps"] = scoremaps.finish(run.workdir)
  out.update(_stage_figures(name, run, test, recorder, step))
  if stage.summarize is not None:
    out.update(stage.summarize(out))
  if jax.process_index() == 0:
    files.write_json(results_path, out)
  return out


def _stage_figures(name: str, run: Run, test: Dict, recorder: figures.TestRecorder,
                   step: int) -> Dict:
  """The stage's test figures under `<workdir>/<name>/figures/` (process 0) and the
  activation histograms; a failure to draw is logged, never loses the stage's results."""
  config = run.config
  hist = recorder.hist
  if jax.process_count() > 1:  # each process saw its shard: sum the histograms
    hist = {k: np.asarray(v).sum(0) for k, v in multihost_utils.process_allgather(hist).items()}
    recorder.hist = hist
  out = {"activation_histogram": {"edges": np.linspace(0, 1, recorder.bins + 1).tolist(),
                                  **{k: v.tolist() for k, v in hist.items()}}}
  if jax.process_index() != 0 or not config.eval.get("num_figures", 8):
    return {**out, "figures": []}
  t0 = time.time()
  fig_dir = os.path.join(run.workdir, name, "figures")
  try:
    paths = figures.write_stage_figures(
        fig_dir, recorder, test, run.splits["test"],
        iou_thresholds=tuple(config.eval.iou_thresholds), method=config.cam.method,
        writer=run.writer, step=step, prefix=f"{name}/")
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("%s: drawing the test figures failed", name)
    return {**out, "figures": [], "figures_error": f"{type(e).__name__}: {e}"}
  logging.info("%s: %d figures in %s (%.1fs)", name, len(paths), fig_dir, time.time() - t0)
  return {**out, "figures": [os.path.relpath(p, run.workdir) for p in paths]}
