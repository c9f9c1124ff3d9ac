"""Pieces shared by the box and mask evaluators: thresholds, score-map checks, top-k."""

from typing import Dict, Mapping

import numpy as np


def cam_thresholds(interval: float) -> np.ndarray:
  """The score-map thresholds tau: `arange(0, 1, interval)` in float64, as the benchmark."""
  if not 0.0 < interval < 1.0:
    raise ValueError(f"cam_curve_interval={interval!r}: must be in (0, 1)")
  return np.arange(0, 1, interval, dtype=np.float64)


def check_scoremaps(scoremaps, indices, map_size: int, names=None):
  """(B, S, S) finite float64 maps in [0, 1] and (B,) int indices, or a ValueError.

  `names(index)` gives the image id to put in error messages.
  """
  maps = np.asarray(scoremaps)
  idx = np.asarray(indices).reshape(-1)
  if maps.ndim != 3 or maps.shape[1:] != (map_size, map_size):
    raise ValueError(f"score maps must be (B, {map_size}, {map_size}); got {maps.shape}")
  if maps.shape[0] != idx.shape[0]:
    raise ValueError(f"{maps.shape[0]} score maps but {idx.shape[0]} indices")
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"indices must be integers; got {idx.dtype}")
  maps = maps.astype(np.float64)  # the benchmark checks (and quantizes) float64 maps
  bad = (~np.isfinite(maps).all(axis=(1, 2)) | (maps < 0).any(axis=(1, 2))
         | (maps > 1).any(axis=(1, 2)))
  if bad.any():
    b = int(np.flatnonzero(bad)[0])
    name = names(int(idx[b])) if names else f"index {int(idx[b])}"
    m = maps[b]
    raise ValueError(f"score map of {name}: values must be finite and in [0, 1] "
                     f"(min {np.nanmin(m) if not np.isnan(m).all() else 'nan'}, "
                     f"max {np.nanmax(m) if not np.isnan(m).all() else 'nan'}, "
                     f"{int(np.isnan(m).sum())} NaN)")
  return maps, idx.astype(np.int64)


def topk_hits(logits, labels, ks=(1, 5)) -> Dict[int, np.ndarray]:
  """k -> (B,) bool: label among the k highest logits (ties: lower class index first)."""
  logits = np.asarray(logits)
  labels = np.asarray(labels).reshape(-1)
  if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
    raise ValueError(f"logits must be (B, K) with B={labels.shape[0]}; got {logits.shape}")
  order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")
  return {k: (order[:, :k] == labels[:, None]).any(axis=1) for k in ks}


def add_counts(target, state: Mapping[str, np.ndarray], keys, differ: str):
  """target.<key> += state[key] for each key, refusing arrays of another shape."""
  for key in keys:
    value = np.asarray(state[key])
    if value.shape != getattr(target, key).shape:
      raise ValueError(f"cannot merge {key} of shape {value.shape} into "
                       f"{getattr(target, key).shape} ({differ})")
    setattr(target, key, getattr(target, key) + value.astype(np.int64))
  target.count += int(state["count"])
  target.cls.merge_state(state)


class ClassificationCounts:
  """Streaming top-1 / top-5 classification accuracy."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.count = 0
    self.top1 = 0
    self.top5 = 0

  def update(self, logits, labels) -> Dict[int, np.ndarray]:
    hits = topk_hits(logits, labels)
    self.count += len(hits[1])
    self.top1 += int(hits[1].sum())
    self.top5 += int(hits[5].sum())
    return hits

  def state(self) -> Dict[str, np.ndarray]:
    return {"cls_count": np.int64(self.count), "cls_top1": np.int64(self.top1),
            "cls_top5": np.int64(self.top5)}

  def merge_state(self, state: Mapping[str, np.ndarray]):
    self.count += int(state["cls_count"])
    self.top1 += int(state["cls_top1"])
    self.top5 += int(state["cls_top5"])

  def results(self, num_images: int) -> Dict[str, float]:
    """top1_cls / top5_cls in percent, {} when no logits were given."""
    if self.count == 0:
      return {}
    if self.count != num_images:
      raise ValueError(f"logits were given for {self.count} of {num_images} images: "
                       "pass logits with every update or with none")
    return {"top1_cls": 100.0 * self.top1 / self.count, "top5_cls": 100.0 * self.top5 / self.count}

