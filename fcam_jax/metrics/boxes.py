"""Box localization metrics of the WSOL benchmark (docs/design.md §9): MaxBoxAcc, MaxBoxAccV2, Top-k Loc.

Per image and threshold tau the benchmark binarizes `q = uint8(map * 255)` at
`q > int(tau * max(q))`, takes OpenCV contours (RETR_TREE, CHAIN_APPROX_SIMPLE) and
turns the largest one (MaxBoxAcc) or every one (MaxBoxAccV2) into a box
`x, y, min(x + w, S - 1), min(y + h, S - 1)`; no contour gives the box (0, 0, 0, 0).

Speed: a uint8 map has at most 256 distinct binarizations (`q > t` only changes where
a value of q is crossed), so contours are computed once per distinct binarization and
the thresholds are mapped onto them. The counts equal the per-threshold definition
exactly (tests/metrics checks it map by map).
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from fcam_jax.metrics import common

_ORIGIN = np.zeros((1, 1, 2), np.int32)


def quantize(scoremap) -> np.ndarray:
  """uint8(map * 255) computed in float64 (the benchmark evaluates float64 maps)."""
  return (np.asarray(scoremap, np.float64) * 255).astype(np.uint8)


def scale_boxes(boxes, width: int, height: int, size: int) -> np.ndarray:
  """Ground-truth boxes (n, 4) x0y0x1y1 in original pixels -> int64 boxes at `size`.

  Each coordinate is `int(c * size / extent)` (truncation of both corners).
  """
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  extent = np.array([width, height, width, height], np.float64)
  return np.trunc(b * float(size) / extent).astype(np.int64)


def box_iou(a, b) -> np.ndarray:
  """(n, m) IoU of int x0y0x1y1 boxes counting pixels inclusively (+1); 0 if degenerate."""
  a = np.asarray(a, np.int64).reshape(-1, 4)[:, None, :]
  b = np.asarray(b, np.int64).reshape(-1, 4)[None, :, :]
  iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
  ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
  inter = iw * ih
  area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
  area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
  union = area_a + area_b - inter
  ok = union > 0
  return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def _boxes_and_areas(contours, width: int, height: int):
  """Per contour: the box from cv2.boundingRect and twice cv2.contourArea.

  Vectorized over a list of OpenCV contours: the rect of integer points is
  min .. max + 1 and the area the shoelace formula, exact in int64.
  """
  lengths = np.fromiter(map(len, contours), np.int64, len(contours))
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
  lo = np.minimum.reduceat(pts, starts, axis=0)
  hi = np.maximum.reduceat(pts, starts, axis=0)
  boxes = np.stack([lo[:, 0], lo[:, 1], np.minimum(hi[:, 0] + 1, width - 1),
                    np.minimum(hi[:, 1] + 1, height - 1)], axis=1)
  # Each contour is a closed polygon: its last point connects back to its first.
  nxt = np.arange(1, len(pts) + 1)
  nxt[starts + lengths - 1] = starts
  cross = pts[:, 0] * pts[nxt, 1] - pts[:, 1] * pts[nxt, 0]
  return boxes, np.abs(np.add.reduceat(cross, starts))


def binarize(q: np.ndarray, tau: float) -> np.ndarray:
  """The evaluator's foreground of a uint8 map at threshold tau: `q > int(tau * max(q))`."""
  return q > np.floor(np.float64(tau) * int(q.max()))


def largest_contour_box(q: np.ndarray, tau: float) -> Optional[np.ndarray]:
  """The evaluator's box (MaxBoxAcc) of a uint8 map at threshold tau, or None without a
  contour (the evaluator then scores the box (0, 0, 0, 0)).

  OpenCV contours of `binarize(q, tau)` (RETR_TREE, CHAIN_APPROX_SIMPLE); the first
  contour of largest area; its box `x, y, min(x + w, W - 1), min(y + h, H - 1)`.
  """
  binary = binarize(q, tau).astype(np.uint8)
  contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
  if not len(contours):
    return None
  height, width = q.shape
  boxes, area2 = _boxes_and_areas(contours, width, height)
  return boxes[int(np.argmax(area2))]


def threshold_ious(q: np.ndarray, gt_boxes: np.ndarray,
                   thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Best IoU with the ground truth at every threshold, (largest contour, all contours).

  `q` is the uint8 map, `gt_boxes` (n, 4) int boxes at q's size. Contours are found
  once per distinct binarization (not once per threshold); the boxes of all of them
  are then scored in one vectorized pass.
  """
  height, width = q.shape
  levels = np.floor(thresholds * int(q.max())).astype(np.int64)  # int(tau * max(q))
  values = np.flatnonzero(np.bincount(q.ravel(), minlength=256))
  # q > level  <=>  q >= the smallest present value above level (none: empty image).
  first_above = np.searchsorted(values, levels, side="right")
  keys, inverse = np.unique(first_above, return_inverse=True)
  contours, counts, empty = [], np.zeros(len(keys), np.int64), []
  for j, k in enumerate(keys):
    found = ()
    if k < len(values):
      binary = cv2.threshold(q, float(values[k]) - 1, 1, cv2.THRESH_BINARY)[1]
      found = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(found):
      contours.extend(found)
      counts[j] = len(found)
    else:  # no contour: a one-point placeholder whose box is set to (0, 0, 0, 0) below
      empty.append(len(contours))
      contours.append(_ORIGIN)
      counts[j] = 1
  boxes, area2 = _boxes_and_areas(contours, width, height)
  seg = np.concatenate([[0], np.cumsum(counts)[:-1]])
  boxes[empty] = 0
  iou = box_iou(boxes, gt_boxes).max(axis=1)
  # Largest contour of each level: the first one with the level's maximal area.
  level_of = np.repeat(np.arange(len(keys)), counts)
  is_max = area2 == np.maximum.reduceat(area2, seg)[level_of]
  largest = np.minimum.reduceat(np.where(is_max, np.arange(len(area2)), len(area2)), seg)
  best_largest = iou[largest]
  best_all = np.maximum.reduceat(iou, seg)
  inverse = inverse.reshape(-1)
  return best_largest[inverse], best_all[inverse]


class BoxEvaluator:
  """Streaming MaxBoxAcc / MaxBoxAccV2 / Top-k Loc / classification over score maps.

  Args:
    records: the split's ImageRecords (boxes, width, height, label); `update` names
      images by `ImageRecord.index`.
    map_size: S, the score maps' side; ground-truth boxes are scaled to it.
    cam_curve_interval: threshold step (thresholds `arange(0, 1, step)`).
    iou_thresholds: IoU deltas (percent) of MaxBoxAccV2; IoU 50 is always counted
      for MaxBoxAcc and Top-k Loc.
  """

  def __init__(self, records: Sequence, map_size: int = 224, cam_curve_interval: float = 0.001,
               iou_thresholds: Sequence[int] = (30, 50, 70)):
    self.map_size = int(map_size)
    self.thresholds = common.cam_thresholds(cam_curve_interval)
    self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
    if not self.iou_thresholds or any(not 0 < d <= 100 for d in self.iou_thresholds):
      raise ValueError(f"iou_thresholds={iou_thresholds!r}: percents in (0, 100]")
    self.deltas = tuple(sorted(set(self.iou_thresholds) | {50}))
    self._gt: Dict[int, np.ndarray] = {}
    self._records = {}
    for r in records:
      if r.index in self._records:
        raise ValueError(f"two records have index {r.index} ({r.image_id})")
      boxes = np.asarray(r.boxes, np.float64).reshape(-1, 4)
      if len(boxes) == 0:
        raise ValueError(f"{r.image_id}: no ground-truth box to evaluate against")
      if r.width <= 0 or r.height <= 0:
        raise ValueError(f"{r.image_id}: unknown image size {r.width}x{r.height}")
      self._records[r.index] = r
      self._gt[r.index] = scale_boxes(boxes, r.width, r.height, self.map_size)
    self.reset()

  def reset(self):
    shape = (len(self.deltas), len(self.thresholds))
    self.count = 0
    self.correct = np.zeros(shape, np.int64)       # largest contour
    self.correct_all = np.zeros(shape, np.int64)   # all contours
    self.correct_top1 = np.zeros(len(self.thresholds), np.int64)  # largest, IoU 50
    self.correct_top5 = np.zeros(len(self.thresholds), np.int64)
    self.cls = common.ClassificationCounts()

  def _name(self, index: int) -> str:
    r = self._records.get(index)
    return r.image_id if r is not None else f"index {index}"

  def _score(self, scoremap: np.ndarray, index: int) -> Tuple[np.ndarray, np.ndarray]:
    return threshold_ious(quantize(scoremap), self._gt[int(index)], self.thresholds)

  def update(self, scoremaps, indices, logits: Optional[np.ndarray] = None, pool=None):
    """Adds a batch: scoremaps (B, S, S) in [0, 1], indices (B,), logits (B, K) or None.

    `pool` (a concurrent.futures executor) scores the images in parallel threads
    (OpenCV releases the GIL); the counts are the same.
    """
    maps, idx = common.check_scoremaps(scoremaps, indices, self.map_size, self._name)
    unknown = [int(i) for i in idx if int(i) not in self._gt]
    if unknown:
      raise ValueError(f"indices {unknown[:5]} are not among the evaluator's records")
    hits = None
    if logits is not None:
      labels = np.asarray([self._records[int(i)].label for i in idx], np.int64)
      hits = self.cls.update(logits, labels)
    deltas = (np.asarray(self.deltas) / 100)[:, None]
    i50 = self.deltas.index(50)
    scored = (pool.map if pool is not None else map)(self._score, maps, idx)
    for b, (largest, every) in enumerate(scored):
      ok = largest[None] >= deltas
      self.correct += ok
      self.correct_all += every[None] >= deltas
      if hits is not None:
        self.correct_top1 += ok[i50] & hits[1][b]
        self.correct_top5 += ok[i50] & hits[5][b]
    self.count += len(idx)

  def state(self) -> Dict[str, np.ndarray]:
    """The counts as a flat dict of numpy arrays; states of shards add up elementwise."""
    return {"count": np.int64(self.count), "correct": self.correct.copy(),
            "correct_all": self.correct_all.copy(), "correct_top1": self.correct_top1.copy(),
            "correct_top5": self.correct_top5.copy(), **self.cls.state()}

  def merge_state(self, state: Mapping[str, np.ndarray]):
    common.add_counts(self, state, ("correct", "correct_all", "correct_top1", "correct_top5"),
                      "different thresholds or IoU deltas")

  def merge(self, other: "BoxEvaluator"):
    self.merge_state(other.state())

  def compute(self) -> Dict[str, object]:
    """The metrics (keys documented in fcam_jax.metrics), JSON-serialisable."""
    if self.count == 0:
      raise ValueError("BoxEvaluator.compute: no score map was evaluated")
    taus = self.thresholds
    acc = self.correct * 100.0 / float(self.count)
    acc_all = self.correct_all * 100.0 / float(self.count)
    i50 = self.deltas.index(50)
    out: Dict[str, object] = {"num_images": int(self.count)}
    out["MaxBoxAcc"] = float(acc[i50].max())
    out["best_tau_MaxBoxAcc"] = float(taus[np.argmax(acc[i50])])
    for i, d in enumerate(self.deltas):
      out[f"MaxBoxAcc@{d}"] = float(acc[i].max())
    v2 = [acc_all[self.deltas.index(d)].max() for d in self.iou_thresholds]
    out["MaxBoxAccV2"] = float(np.average(v2))
    for d in self.iou_thresholds:
      row = acc_all[self.deltas.index(d)]
      out[f"MaxBoxAccV2@{d}"] = float(row.max())
      out[f"best_tau_MaxBoxAccV2@{d}"] = float(taus[np.argmax(row)])
    cls = self.cls.results(self.count)
    curves = {}
    if cls:
      top1 = self.correct_top1 * 100.0 / float(self.count)
      top5 = self.correct_top5 * 100.0 / float(self.count)
      out.update(top1_loc=float(top1.max()), best_tau_top1_loc=float(taus[np.argmax(top1)]),
                 top5_loc=float(top5.max()), best_tau_top5_loc=float(taus[np.argmax(top5)]))
      out.update(cls)
      curves = {"curve_top1_loc": top1.tolist(), "curve_top5_loc": top5.tolist()}
    out["curve_tau"] = taus.tolist()
    for i, d in enumerate(self.deltas):
      out[f"curve_BoxAcc@{d}"] = acc[i].tolist()
    for d in self.iou_thresholds:
      out[f"curve_BoxAccV2@{d}"] = acc_all[self.deltas.index(d)].tolist()
    out.update(curves)
    return out
