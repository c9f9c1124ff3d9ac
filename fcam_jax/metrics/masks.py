"""Pixel-wise localization metric of the WSOL benchmark (docs/design.md §9): PxAP on OpenImages.

Scores are histogrammed over the ground-truth foreground and background pixels (ignore
pixels excluded) into the bins `[tau_0, tau_1), ..., [tau_last, 1), [1, 2), [2, 3]`;
the precision-recall curve comes from the reversed cumulative sums and PxAP is the area
`100 * sum(precision[1:] * diff(recall))` over the points with any prediction. Scores
are not quantized.
"""

import threading
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from fcam_jax.metrics import common

MaskLoader = Callable[[int], Tuple[np.ndarray, np.ndarray]]


class _Binning:
  """Score -> bin index for the edges `thresholds + [1, 2, 3]`, as `np.histogram` bins.

  Bin i holds edges[i] <= s < edges[i + 1]. No sort: the guess `floor(s / interval)` is
  off by at most one bin (rounding near an edge, or the [1, 2) bin when interval does
  not divide 1) and is corrected against the actual edges. Works in scratch buffers
  reused across calls (fresh large temporaries cost more than the arithmetic).
  """

  def __init__(self, thresholds: np.ndarray, interval: float):
    self.edges = np.concatenate([thresholds, [1.0, 2.0, 3.0]])
    self.num_bins = len(self.edges) - 1
    self.scale = 1.0 / interval
    self.shape = None

  def __call__(self, scores: np.ndarray) -> np.ndarray:
    """Bin indices of float64 scores in [0, 1]; a scratch buffer, valid until the next call."""
    if scores.shape != self.shape:
      self.shape = scores.shape
      self._guess, self._edge = np.empty(scores.shape), np.empty(scores.shape)
      self._bins, self._mask = np.empty(scores.shape, np.intp), np.empty(scores.shape, bool)
    g, e, c, m = self._guess, self._edge, self._bins, self._mask
    np.multiply(scores, self.scale, out=g)
    np.floor(g, out=g)
    np.clip(g, 0, self.num_bins - 2, out=g)
    c[...] = g
    np.take(self.edges, c, out=e, mode="clip")  # (mode="raise" with out= is 10x slower)
    np.less(scores, e, out=m)
    np.subtract(c, 1, out=c, where=m)
    np.take(self.edges, c + 1, out=e, mode="clip")
    np.greater_equal(scores, e, out=m)
    np.add(c, 1, out=c, where=m)
    return c


def score_bins(scores: np.ndarray, thresholds: np.ndarray, interval: float) -> np.ndarray:
  """Bin index of each float64 score in [0, 1] for the edges `thresholds + [1, 2, 3]`."""
  return _Binning(thresholds, interval)(np.asarray(scores, np.float64)).copy()


def pr_curve(fg_hist: np.ndarray, bg_hist: np.ndarray):
  """(precision, recall, keep) for "score >= t", t = 2, 1, tau_last, ..., tau_0."""
  tp = fg_hist[::-1].cumsum()
  fp = bg_hist[::-1].cumsum()
  fn = fg_hist.sum() - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
  return precision, recall, (tp + fp) != 0


class MaskEvaluator:
  """Streaming PxAP (and classification accuracy) over score maps.

  Args:
    mask_loader: index -> (foreground bool (S, S), ignore bool (S, S)) at the map size,
      e.g. `fcam_jax.data.metadata.openimages_mask_loader(records, S)`.
    map_size: S.
    cam_curve_interval: threshold step (bins `arange(0, 1, step) + [1, 2, 3]`).
    records: optional ImageRecords, for the labels when logits are given.
  """

  def __init__(self, mask_loader: MaskLoader, map_size: int = 224,
               cam_curve_interval: float = 0.001, records: Optional[Sequence] = None):
    self.mask_loader = mask_loader
    self.map_size = int(map_size)
    self.interval = float(cam_curve_interval)
    self.thresholds = common.cam_thresholds(cam_curve_interval)
    self._records = {r.index: r for r in records} if records is not None else None
    self._binnings = threading.local()  # scratch buffers, one set per thread
    self.reset()

  def reset(self):
    self.count = 0
    self.fg_hist = np.zeros(len(self.thresholds) + 2, np.int64)
    self.bg_hist = np.zeros(len(self.thresholds) + 2, np.int64)
    self.cls = common.ClassificationCounts()

  def _name(self, index: int) -> str:
    r = (self._records or {}).get(index)
    return r.image_id if r is not None else f"index {index}"

  def _histogram(self, scoremap: np.ndarray, index: int) -> np.ndarray:
    """bincount of bin + nb * (0 foreground, 1 background, 2 ignored) over the map."""
    binning = getattr(self._binnings, "value", None)
    if binning is None:
      binning = self._binnings.value = _Binning(self.thresholds, self.interval)
    nb = len(self.fg_hist)
    fg, ignore = self.mask_loader(int(index))
    fg, ignore = np.asarray(fg, bool), np.asarray(ignore, bool)
    if fg.shape != scoremap.shape or ignore.shape != scoremap.shape:
      raise ValueError(f"masks of {self._name(int(index))} are {fg.shape} / {ignore.shape}; "
                       f"the score map is {scoremap.shape}")
    # The offset is looked up from fg + 2 * ignore (an ignore pixel in fg stays fg).
    offsets = np.array([nb, 0, 2 * nb, 0], np.intp)  # bg, fg, ignore, fg and ignore
    key = np.take(offsets, fg.view(np.uint8) | (ignore.view(np.uint8) << 1), mode="clip")
    key += binning(scoremap)
    return np.bincount(key.ravel(), minlength=3 * nb)

  def update(self, scoremaps, indices, logits: Optional[np.ndarray] = None, pool=None):
    """Adds a batch: scoremaps (B, S, S) in [0, 1], indices (B,), logits (B, K) or None.

    `pool` (a concurrent.futures executor) histograms the images in parallel threads;
    the counts are the same.
    """
    maps, idx = common.check_scoremaps(scoremaps, indices, self.map_size, self._name)
    if logits is not None:
      if self._records is None:
        raise ValueError("MaskEvaluator needs `records` (for the labels) to score logits")
      missing = [int(i) for i in idx if int(i) not in self._records]
      if missing:
        raise ValueError(f"indices {missing[:5]} are not among the evaluator's records")
      self.cls.update(logits, [self._records[int(i)].label for i in idx])
    nb = len(self.fg_hist)
    for hist in (pool.map if pool is not None else map)(self._histogram, maps, idx):
      self.fg_hist += hist[:nb]
      self.bg_hist += hist[nb:2 * nb]
    self.count += len(idx)

  def state(self) -> Dict[str, np.ndarray]:
    """The counts as a flat dict of numpy arrays; states of shards add up elementwise."""
    return {"count": np.int64(self.count), "fg_hist": self.fg_hist.copy(),
            "bg_hist": self.bg_hist.copy(), **self.cls.state()}

  def merge_state(self, state: Mapping[str, np.ndarray]):
    common.add_counts(self, state, ("fg_hist", "bg_hist"), "different thresholds")

  def merge(self, other: "MaskEvaluator"):
    self.merge_state(other.state())

  def compute(self) -> Dict[str, object]:
    """The metrics (keys documented in fcam_jax.metrics), JSON-serialisable."""
    if self.count == 0:
      raise ValueError("MaskEvaluator.compute: no score map was evaluated")
    if self.fg_hist.sum() == 0:
      raise ValueError("MaskEvaluator.compute: no ground-truth foreground pixel in the "
                       "evaluated set")
    precision, recall, keep = pr_curve(self.fg_hist, self.bg_hist)
    pxap = (precision[1:] * np.diff(recall))[keep[1:]].sum()
    pxap *= 100
    lower_edges = np.concatenate([self.thresholds, [1.0, 2.0]])[::-1]
    keep[0] = False  # the first point (scores >= 2) is never a prediction
    out: Dict[str, object] = {"num_images": int(self.count), "PxAP": float(pxap)}
    out.update(self.cls.results(self.count))
    out["curve_pr_threshold"] = lower_edges[keep].tolist()
    out["curve_precision"] = precision[keep].tolist()
    out["curve_recall"] = recall[keep].tolist()
    return out
