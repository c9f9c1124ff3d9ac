"""The WSOL metrics written plainly from their definition (docs/design.md §9), one threshold at a time.

The independent reference the fast evaluators in fcam_jax.metrics are checked against
(tests) and timed against (benchmarks/bench_metrics.py). Deliberately slow and simple.
"""

import cv2
import numpy as np


def thresholds(interval):
  return list(np.arange(0, 1, interval))


def gt_box_at_size(box, width, height, size):
  x0, y0, x1, y1 = (float(v) for v in box)
  return [int(x0 * size / width), int(y0 * size / height),
          int(x1 * size / width), int(y1 * size / height)]


def predicted_boxes(scoremap, tau):
  """(largest contour's box, every contour's box) of the map binarized at tau."""
  size = scoremap.shape[0]
  q = (np.asarray(scoremap, np.float64) * 255).astype(np.uint8)
  _, binary = cv2.threshold(q, int(tau * np.max(q)), 255, cv2.THRESH_BINARY)
  contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
  if len(contours) == 0:
    return [[0, 0, 0, 0]], [[0, 0, 0, 0]]
  boxes = []
  for contour in contours:
    x, y, w, h = cv2.boundingRect(contour)
    boxes.append([x, y, min(x + w, size - 1), min(y + h, size - 1)])
  largest = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))
  return [boxes[largest]], boxes


def iou(a, b):
  iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
  ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
  inter = iw * ih
  union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
  return inter / union if union > 0 else 0.0


def box_correct(scoremaps, records, interval=0.001, deltas=(30, 50, 70)):
  """Per delta and tau, the number of images whose best IoU is >= delta / 100.

  Returns (largest contour, all contours), each (len(deltas), T).
  """
  taus = thresholds(interval)
  correct = np.zeros((2, len(deltas), len(taus)), np.int64)
  for scoremap, r in zip(scoremaps, records):
    size = scoremap.shape[0]
    gts = [gt_box_at_size(b, r.width, r.height, size) for b in np.asarray(r.boxes)]
    for t, tau in enumerate(taus):
      for v, boxes in enumerate(predicted_boxes(scoremap, tau)):
        best = max(iou(p, g) for p in boxes for g in gts)
        for i, d in enumerate(deltas):
          if best >= d / 100:
            correct[v, i, t] += 1
  return correct[0], correct[1]


def score_histograms(scoremaps, masks, interval=0.001):
  """Histograms of scores over GT-foreground and GT-background pixels (ignore excluded)."""
  edges = np.append(thresholds(interval), [1.0, 2.0, 3.0])
  fg_hist = np.zeros(len(edges) - 1, np.int64)
  bg_hist = np.zeros(len(edges) - 1, np.int64)
  for scoremap, (fg, ignore) in zip(scoremaps, masks):
    scoremap = np.asarray(scoremap, np.float64)
    bg = ~fg & ~ignore
    fg_hist += np.histogram(scoremap[fg], bins=edges)[0]
    bg_hist += np.histogram(scoremap[bg], bins=edges)[0]
  return fg_hist, bg_hist


def pxap(fg_hist, bg_hist):
  tp = fg_hist[::-1].cumsum()
  fp = bg_hist[::-1].cumsum()
  fn = fg_hist.sum() - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
  keep = (tp + fp) != 0
  return 100 * (precision[1:] * np.diff(recall))[keep[1:]].sum()
