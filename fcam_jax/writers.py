"""Metric writers and progress reporting: CLU when TensorFlow is installed, else plain.

clu.metric_writers and clu.periodic_actions import TensorFlow; the accelerator
machines often have none. Without it, `create_writer` returns a writer that logs
and appends JSON lines to `<logdir>/metrics.jsonl`, and `ReportProgress` is a small
stand-in with the same call signature (steps/s and ETA in the log). `EvalProgress`
logs the same during evaluation (batches done / total, images/s, ETA).
"""

import importlib.util
import json
import os
import time
from typing import Any, Mapping, Optional

from absl import logging
import numpy as np


def have_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


class JsonlWriter:
  """Writes scalars (and image/text summaries as notes) to metrics.jsonl and the log."""

  def __init__(self, logdir: str, log: bool = True):
    os.makedirs(logdir, exist_ok=True)
    self._path = os.path.join(logdir, "metrics.jsonl")
    self._log = log

  def _append(self, record):
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._append({"step": int(step), "time": time.time(), **scalars})
    if self._log:
      logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

  def write_images(self, step: int, images: Mapping[str, Any]):
    if self._log:
      logging.info("[%d] images: %s", step,
                   ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in images.items()))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._append({"step": int(step), "texts": dict(texts)})

  def write_hparams(self, hparams: Mapping[str, Any]):
    self._append({"hparams": {k: str(v) for k, v in hparams.items()}})

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Optional[Mapping[str, int]] = None):
    """Appends each array's histogram (bin edges over its range, and counts)."""
    out = {}
    for key, value in arrays.items():
      counts, edges = np.histogram(np.asarray(value), bins=(num_buckets or {}).get(key) or 30)
      out[key] = {"edges": edges.tolist(), "counts": counts.tolist()}
    self._append({"step": int(step), "histograms": out})

  def flush(self):
    pass

  def close(self):
    pass


class NullWriter:
  """What processes other than 0 write: nothing (their metrics are process 0's)."""

  def __getattr__(self, name):
    if name in ("write_scalars", "write_images", "write_texts", "write_hparams",
                "write_histograms", "flush", "close"):
      return lambda *args, **kwargs: None
    raise AttributeError(name)


def create_writer(logdir: str, process_index: int = 0, use_tensorboard: Optional[bool] = None):
  """CLU's default writer (TensorBoard + logging) plus metrics.jsonl on process 0.

  Other processes get a writer that writes nothing. Without TensorFlow (or with
  use_tensorboard=False) only the JSON-lines writer is used.
  """
  if process_index > 0:
    return NullWriter()
  if use_tensorboard is None:
    use_tensorboard = have_tensorflow()
  jsonl = JsonlWriter(logdir, log=not use_tensorboard)
  if not use_tensorboard:
    logging.info("TensorFlow is not installed: metrics go to %s/metrics.jsonl only", logdir)
    return jsonl
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  return metric_writers.MultiWriter(
      [metric_writers.create_default_writer(logdir, asynchronous=False), jsonl])


class _PlainProgress:
  """clu.periodic_actions.ReportProgress without TensorFlow: steps/s and ETA."""

  def __init__(self, num_train_steps: Optional[int], writer=None, every_steps: int = 50):
    self._total, self._writer, self._every = num_train_steps, writer, every_steps
    self._last_step, self._last_time = None, None

  def __call__(self, step: int, t: Optional[float] = None):
    t = time.time() if t is None else t
    if self._last_step is None:
      self._last_step, self._last_time = step, t
      return
    if step - self._last_step < self._every:
      return
    rate = (step - self._last_step) / max(t - self._last_time, 1e-9)
    eta = (self._total - step) / rate if self._total else float("nan")
    logging.info("%.1f steps/s, %s (%d/%s), ETA: %s", rate,
                 f"{100 * step / self._total:.1f}%" if self._total else "?", step,
                 self._total or "?", _hms(eta))
    if self._writer is not None:
      self._writer.write_scalars(step, {"steps_per_sec": rate})
    self._last_step, self._last_time = step, t


def report_progress(num_train_steps: int, writer, every_steps: int = 50):
  """A periodic action reporting steps/s and ETA (CLU's if available)."""
  if have_tensorflow():
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
    return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer,
                                           every_steps=every_steps)
  return _PlainProgress(num_train_steps, writer, every_steps)


def _hms(secs: float) -> str:
  return time.strftime("%H:%M:%S", time.gmtime(secs)) if np.isfinite(secs) else "?"


class EvalProgress:
  """Logs `name: b/total batches, images/s, ETA` while a split is evaluated.

  Called after each batch with the batches done and the images they held; logs
  every `every_secs` (and every `every_batches` if set) and, when anything was
  logged, a last line at the end. Rates start after the first batch (which
  includes compilation).
  """

  def __init__(self, name: str, total_batches: int, every_secs: float = 30.0,
               every_batches: Optional[int] = None, clock=time.monotonic):
    self._name, self._total = name, int(total_batches)
    self._every_secs, self._every_batches, self._clock = every_secs, every_batches, clock
    self._start = self._last = None
    self._images0 = 0
    self._logged = False

  def __call__(self, batches: int, images: int) -> Optional[str]:
    t = self._clock()
    if self._start is None:
      self._start = self._last = t
      self._images0 = images
      return None
    due = (t - self._last >= self._every_secs
           or (self._every_batches and batches % self._every_batches == 0)
           or (batches == self._total and self._logged))
    if not due:
      return None
    elapsed = max(t - self._start, 1e-9)
    rate = (images - self._images0) / elapsed
    eta = (self._total - batches) * elapsed / max(batches - 1, 1)
    message = (f"{self._name}: {batches}/{self._total} batches, {rate:.1f} images/s, "
               f"ETA {_hms(eta)}")
    logging.info("%s", message)
    self._last, self._logged = t, True
    return message
