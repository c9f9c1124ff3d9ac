"""train_and_evaluate(config, workdir): stage 1 (the WSOL classifier), then stage 2 (F-CAM).

Each stage trains epoch by epoch, evaluates on val before the first epoch and
after each one, keeps the latest and the best checkpoint (by
`config.eval.selection_metric`), resumes from the latest when run again, and ends
with the best checkpoint evaluated on test. `<workdir>/results.json` collects the
test metrics with the config, the package versions and the git commit.

SIGTERM checkpoints at the next step boundary and raises `Preempted`; a NaN/Inf loss
term or gradient raises `NonFiniteError` before the diverged state is saved.
"""

import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcam_jax import checkpoint as ckpt_lib
from fcam_jax import config_lib
from fcam_jax import figures
from fcam_jax import metrics as metrics_lib
from fcam_jax import optim
from fcam_jax import parallel
from fcam_jax import steps
from fcam_jax import weights
from fcam_jax import writers
from fcam_jax.data import pipeline
from fcam_jax.data import sources
from fcam_jax import models


def compute_dtype(config):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def _check_workdir(workdir: str):
  """Fails before any training if the workdir cannot be written."""
  os.makedirs(workdir, exist_ok=True)
  probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
  try:
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"workdir {workdir} is not writable: {e}") from e


def check_free_space(directory: str, state, copies: int = 3):
  """Fails before training if `directory` cannot hold `copies` checkpoints of `state`
  (the latest, the best and the one being written)."""
  need = copies * sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
  free = shutil.disk_usage(directory).free
  if free < need:
    raise OSError(f"workdir {directory} has {free / 2**20:.0f} MiB free; its checkpoints need "
                  f"about {need / 2**20:.0f} MiB ({copies} x the training state): free some "
                  "space or use another --workdir")


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


def evaluate(map_fn: Callable, variables, split: sources.Split, config, interval: float,
             rng: jax.Array, names: Iterable[str] = ("cam",),
             observe: Optional[Callable] = None, label: str = "",
             par: Optional[parallel.DataParallel] = None) -> Dict[str, Dict]:
  """Scores the maps `map_fn(variables, batch, rng) -> (logits, maps...)` on `split`.

  `names` labels the maps map_fn returns after the logits (e.g. ('cam', 'fcam')).
  Padding entries (mask 0) are dropped on the host, so every image counts once.
  `observe(batch, {name: maps})`, if given, sees every batch's valid entries and the
  maps scored (e.g. a figures.TestRecorder). Progress is logged as `label`.
  """
  names = tuple(names)
  evaluators = {n: make_evaluators(split, config, interval) for n in names}
  local_batch = config.eval.batch_size // jax.process_count()
  par = par or parallel.DataParallel()
  rngs = par.keys(rng)
  progress = writers.EvalProgress(
      label or split.name, pipeline.num_eval_batches(len(split), local_batch, jax.process_count()))
  images = 0
  for b, batch in enumerate(pipeline.eval_batches(split, config, local_batch=local_batch,
                                                  process_index=jax.process_index(),
                                                  process_count=jax.process_count())):
    out = par.unshard(map_fn(variables, par.shard(batch), rngs))
    logits, maps = out[0], out[1:]
    valid = batch["mask"]
    for name, m in zip(names, maps):
      for ev in evaluators[name]:
        ev.update(m[valid], batch["index"][valid], logits[valid])
    if observe is not None:
      observe({k: v[valid] for k, v in batch.items()},
              {name: m[valid] for name, m in zip(names, maps)})
    images += int(valid.sum())
    progress(b + 1, images)
  results = {}
  for name in names:
    merged = {}
    for ev in evaluators[name]:
      if jax.process_count() > 1:  # each process saw its shard: sum the counts
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        gathered = multihost_utils.process_allgather(ev.state())
        ev.reset()
        ev.merge_state({k: np.asarray(v).sum(0) for k, v in gathered.items()})
      merged.update(ev.compute())
    results[name] = merged
  return results


def _scalars(metrics: Dict) -> Dict[str, float]:
  return {k: float(v) for k, v in metrics.items()
          if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


def _versions() -> Dict[str, str]:
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version()}
  for pkg in ("fcam_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain",
              "tensorflow-datasets", "opencv-python-headless", "clu", "ml-collections"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = "not installed"
  return out


def _git_commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _write_json(path: str, obj):
  if jax.process_index() == 0:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


class NonFiniteError(RuntimeError):
  """A NaN or Inf loss or gradient; the message names the stage, step and loss term."""


class Preempted(Exception):
  """SIGTERM: a checkpoint was saved at a step boundary; rerunning resumes from it."""


class _MeanMetrics:
  """Averages per-step metrics (pmean'ed, so the same on every device) over an interval,
  and stops at the first step whose metrics are not finite."""

  def __init__(self, stage: str):
    self._stage = stage
    self._items = []

  def add(self, step: int, m):
    self._items.append((step, m))

  def pop(self, par: parallel.DataParallel) -> Dict[str, float]:
    items = [(step, par.first(m)) for step, m in self._items]  # one host sync per interval
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


# The selection score of a preemption checkpoint: below any metric, so never `best`.
_PREEMPTION_SCORE = -1.0


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
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def run_stage(*, name: str, config, workdir: str, splits: Dict[str, sources.Split], writer,
              state: steps.TrainState, train_step: Callable,
              map_fn: Callable, variables_of: Callable, map_names=("cam",),
              test_map_fn: Optional[Callable] = None, test_map_names=None,
              end_of_epoch: Optional[Callable] = None, summarize: Optional[Callable] = None,
              stage_config, par: parallel.DataParallel) -> Dict:
  """The epoch loop shared by both stages; returns the stage's results dict.

  `map_fn(variables, batch, rng) -> (logits, *maps)` gives the maps named
  `map_names` on val; the last one selects the checkpoint. `test_map_fn` /
  `test_map_names` (default: the same) give the maps reported on test.
  """
  stage_dir = os.path.join(workdir, name)
  results_path = os.path.join(stage_dir, "results.json")
  if os.path.exists(results_path):
    logging.info("%s already finished: %s", name, results_path)
    with open(results_path) as f:
      return json.load(f)

  train_split = splits["train"]
  global_batch = stage_config.batch_size
  if global_batch % jax.device_count():
    raise config_lib.ConfigError(
        f"config.{name}.batch_size={global_batch} does not split over {jax.device_count()} devices")
  spe = pipeline.steps_per_epoch(len(train_split), global_batch)
  total_steps = stage_config.epochs * spe
  selection = config.eval.selection_metric
  eval_rng = jax.random.key(config.seed + 1)

  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_dir, "checkpoints"))
  check_free_space(stage_dir, state)
  latest = ckpt.latest_step()
  if latest is not None:
    state, meta = ckpt.restore(latest, state)
    logging.info("%s: resuming from step %d (epoch %d)", name, latest, latest // spe)
  else:
    meta = {"history": []}

  def validate(state_r, epoch: int, step: int):
    t0 = time.time()
    val = evaluate(map_fn, variables_of(state_r), splits["val"], config,
                   config.eval.val_interval, eval_rng, map_names,
                   label=f"{name} val (epoch {epoch})", par=par)[map_names[-1]]
    if selection not in val:
      raise config_lib.ConfigError(
          f"config.eval.selection_metric={selection!r} is not computed on this dataset; "
          f"available: {', '.join(sorted(_scalars(val)))}")
    writer.write_scalars(step, {f"{name}/val/{k}": v for k, v in _scalars(val).items()})
    meta["history"].append({"epoch": epoch, "step": step, **_scalars(val)})
    logging.info("%s epoch %d: val %s=%.3f (%.1fs)", name, epoch, selection, val[selection],
                 time.time() - t0)
    return float(val[selection])

  state_r = par.replicate(state)
  step = int(state.step)
  if latest is None:  # evaluate the initial model; it competes for `best` too.
    ckpt.save(0, state, meta, validate(state_r, 0, 0))
  elif step % spe == 0 and not any(h["step"] == step for h in meta["history"]):
    # Saved at the end of an epoch whose validation did not finish: validate it now.
    ckpt.save(step, state, meta, validate(state_r, step // spe, step))

  progress = writers.report_progress(total_steps, writer, every_steps=config.log_every_steps)
  train_metrics = _MeanMetrics(name)
  sigterm = _SigtermFlag()
  preempted = False
  try:
    for epoch in range(step // spe, stage_config.epochs):
      for batch in pipeline.train_batches(
          train_split, config, global_batch=global_batch, epoch=epoch,
          start_step=step - epoch * spe, seed=config.seed, process_index=jax.process_index(),
          process_count=jax.process_count()):
        state_r, m = train_step(state_r, par.shard(batch))
        train_metrics.add(step + 1, m)
        step += 1
        progress(step)
        preempted = sigterm(step)
        if step % config.log_every_steps == 0 or step == (epoch + 1) * spe or preempted:
          writer.write_scalars(step, {f"{name}/train/{k}": v
                                      for k, v in train_metrics.pop(par).items()})
        if preempted and step < (epoch + 1) * spe:  # the data order and keys resume from `step`
          ckpt.save(step, par.unreplicate(state_r), meta, _PREEMPTION_SCORE)
          raise Preempted(f"{name}: preempted at step {step}; checkpoint saved in "
                          f"{ckpt.directory}. Rerun the same command to resume.")
      if end_of_epoch is not None:
        state_r = end_of_epoch(state_r)
      try:
        score = validate(state_r, epoch + 1, step)
      except Exception:  # e.g. an unreadable val image: keep the epoch's training
        ckpt.save(step, par.unreplicate(state_r), meta, _PREEMPTION_SCORE)
        raise
      if ((epoch + 1) % config.checkpoint_every_epochs == 0 or epoch + 1 == stage_config.epochs
          or preempted):
        ckpt.save(step, par.unreplicate(state_r), meta, score)
      writer.flush()
      if preempted:  # at the end of an epoch: after its validation and checkpoint
        raise Preempted(f"{name}: preempted at step {step} (end of epoch {epoch + 1}); "
                        f"checkpoint saved in {ckpt.directory}. Rerun the same command to resume.")
  finally:
    sigterm.close()

  best = ckpt.best_step()
  best_state, _ = ckpt.restore(best, state)
  best_epoch = best // spe
  logging.info("%s: testing the best checkpoint (step %d, epoch %d)", name, best, best_epoch)
  test_names = tuple(test_map_names or map_names)
  recorder = figures.TestRecorder(test_names, config.eval.get("num_figures", 8))
  test = evaluate(test_map_fn or map_fn, variables_of(par.replicate(best_state)),
                  splits["test"], config, config.eval.test_interval, eval_rng, test_names,
                  observe=recorder, label=f"{name} test", par=par)
  for map_name, metrics in test.items():
    writer.write_scalars(step, {f"{name}/test/{map_name}/{k}": v for k, v in _scalars(metrics).items()})
  ckpt.close()
  out = {"best_step": best, "best_epoch": best_epoch, "steps_per_epoch": spe,
         "selection_metric": selection,
         "val_at_best": next((h for h in meta["history"] if h["step"] == best), None),
         "history": meta["history"], "test": test}
  out.update(_stage_figures(name, config, workdir, splits["test"], test, recorder, writer, step))
  if summarize is not None:
    out.update(summarize(out))
  _write_json(results_path, out)
  return out


def _stage_figures(name: str, config, workdir: str, split: sources.Split, test: Dict,
                   recorder, writer, step: int) -> Dict:
  """The stage's test figures under `<workdir>/<name>/figures/` (process 0) and the
  activation histograms; a failure to draw is logged, never loses the stage's results."""
  hist = recorder.hist
  if jax.process_count() > 1:  # each process saw its shard: sum the histograms
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    hist = {k: np.asarray(v).sum(0) for k, v in multihost_utils.process_allgather(hist).items()}
    recorder.hist = hist
  out = {"activation_histogram": {"edges": np.linspace(0, 1, recorder.bins + 1).tolist(),
                                  **{k: v.tolist() for k, v in hist.items()}}}
  if jax.process_index() != 0 or not config.eval.get("num_figures", 8):
    return {**out, "figures": []}
  t0 = time.time()
  try:
    paths = figures.write_stage_figures(
        os.path.join(workdir, name, "figures"), recorder, test, split,
        iou_thresholds=tuple(config.eval.iou_thresholds), method=config.cam.method,
        writer=writer, step=step, prefix=f"{name}/")
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("%s: drawing the test figures failed", name)
    return {**out, "figures": [], "figures_error": f"{type(e).__name__}: {e}"}
  logging.info("%s: %d figures in %s (%.1fs)", name, len(paths),
               os.path.join(workdir, name, "figures"), time.time() - t0)
  return {**out, "figures": [os.path.relpath(p, workdir) for p in paths]}


def _write_summary(results: Dict, workdir: str, writer):
  """The test metrics as a table: logged, printed, in `<workdir>/summary.md` and the writer."""
  table = figures.summary_table(results)
  if jax.process_index() == 0:
    logging.info("test results:\n%s", table)
    print(table, flush=True)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(table)
  writer.write_texts(0, {"summary": table})


def train_classifier(config, workdir: str, splits, writer, par: parallel.DataParallel) -> Dict:
  """Stage 1: the WSOL classifier, selected by its CAMs' localization on val."""
  dtype = compute_dtype(config)
  backbone_cls = models.backbone_class(config.model.backbone)
  model = models.build_classifier(config.model, bn_axis_name=parallel.AXIS, dtype=dtype)
  size = config.data.crop_size
  key = jax.random.key(config.seed)
  variables = jax.jit(functools.partial(model.init, train=False))(
      key, jnp.zeros((1, size, size, 3), dtype))
  if config.model.pretrained:
    variables, report = weights.load_pretrained(config.model.pretrained, variables,
                                                config.model.backbone)
    logging.info("stage1: backbone weights from %s\n%s", config.model.pretrained, report)
  params = variables["params"]
  spe = pipeline.steps_per_epoch(len(splits["train"]), config.stage1.batch_size)
  mult = optim.group_multipliers(params, optim.classifier_group(backbone_cls),
                                 config.stage1.classifier_lr_mult)
  tx = optim.sgd(config.stage1, spe, mult)
  state = steps.TrainState(step=jnp.array(0, jnp.int32), params=params,
                           batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                           rng=jax.random.key_data(jax.random.fold_in(key, 1)), aux={})
  train_step = par.step(functools.partial(steps.classifier_train_step, model=model, tx=tx,
                                          dtype=dtype), specs=(False, True))
  map_fn = par.maps(functools.partial(steps.classifier_maps, model=model, cam_config=config.cam,
                                      dtype=dtype), specs=(False, True, "key"))
  return run_stage(
      name="stage1", config=config, workdir=workdir, splits=splits, writer=writer,
      state=state, train_step=train_step, map_fn=map_fn,
      variables_of=lambda s: {"params": s.params, "batch_stats": s.batch_stats},
      stage_config=config.stage1, par=par)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Runs the stages named by `config.stages`; writes and returns `results.json`."""
  config_lib.validate(config)
  _check_workdir(workdir)
  _write_json(os.path.join(workdir, "config.json"), config.to_dict())  # for predict/report
  writer = writers.create_writer(workdir, jax.process_index())
  writer.write_hparams(dict(_flatten(config.to_dict())))
  t0 = time.time()
  par = parallel.DataParallel(config.parallel, parallel.compiler_options(config.cpu_ynnpack))
  splits = sources.load_splits(config)
  sources.skip_log(splits).write(os.path.join(
      workdir, "skipped_files.json" if jax.process_index() == 0
      else f"skipped_files.{jax.process_index()}.json"))
  logging.info("data: %s", {k: len(v) for k, v in splits.items()})
  results = {"config": config.to_dict(), "versions": _versions(), "git_commit": _git_commit(),
             "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
             "metric_definitions": metrics_lib.__doc__,
             "thresholds": {"val_interval": config.eval.val_interval,
                            "test_interval": config.eval.test_interval,
                            "iou_thresholds": list(config.eval.iou_thresholds)}}
  try:
    if config.stages in ("stage1", "both"):
      results["stage1"] = train_classifier(config, workdir, splits, writer, par)
    if config.stages in ("stage2", "both"):
      from fcam_jax import train_fcam  # pylint: disable=g-import-not-at-top
      results["stage2"] = train_fcam.train_decoder(config, workdir, splits, writer, par)
    results["wall_time_s"] = time.time() - t0
    _write_json(os.path.join(workdir, "results.json"), results)
    _write_summary(results, workdir, writer)
  finally:  # also when preempted or stopped by a NaN: what was logged is kept
    writer.flush()
    writer.close()
  return results


def _flatten(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v
