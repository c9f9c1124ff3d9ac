"""Random score maps and ground truth exercising the evaluators' corner cases."""

import cv2
import numpy as np

from fcam_jax.data.records import ImageRecord

KINDS = ("blobs", "upsampled", "multimodal", "holes", "constant", "tiny", "binary_ties", "noise")


def _normalize(m):
  lo, hi = m.min(), m.max()
  return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def score_map(rng, kind, size):
  """One float64 (size, size) map in [0, 1] of the given kind."""
  yy, xx = np.mgrid[:size, :size].astype(np.float64)
  if kind == "blobs":  # smooth, one to four bumps
    m = np.zeros((size, size))
    for _ in range(rng.integers(1, 5)):
      cx, cy = rng.uniform(0, size, 2)
      s = rng.uniform(0.03, 0.25) * size
      m += rng.uniform(0.2, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
    return _normalize(m)
  if kind == "upsampled":  # like a CAM: low resolution, bilinear to full size
    low = rng.random((rng.integers(3, 15),) * 2) ** rng.uniform(1, 4)
    return np.clip(_normalize(cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)), 0, 1)
  if kind == "multimodal":  # plateaus at a few levels: many equal values, equal areas
    m = np.zeros((size, size))
    for level in rng.choice([0.2, 0.35, 0.5, 0.5, 0.75, 1.0], rng.integers(2, 5)):
      x0, y0 = rng.integers(0, size - 2, 2)
      w, h = rng.integers(1, size // 3 + 2, 2)
      m[y0:y0 + h, x0:x0 + w] = np.maximum(m[y0:y0 + h, x0:x0 + w], level)
    return m
  if kind == "holes":  # rings and rings in rings: hole contours in RETR_TREE
    r = np.hypot(xx - rng.uniform(0.3, 0.7) * size, yy - rng.uniform(0.3, 0.7) * size) / size
    return np.clip(0.5 + 0.5 * np.cos(2 * np.pi * r * rng.uniform(2, 6)), 0, 1) * (r < 0.45)
  if kind == "constant":
    return np.full((size, size), rng.choice([0.0, 0.3, 0.5, 1.0]))
  if kind == "tiny":  # max below or just above 1/255: none or one or two uint8 levels
    m = _normalize(rng.random((size, size)) * (np.hypot(xx - size / 2, yy - size / 2) < size / 3))
    return m * rng.choice([0.5, 1.5, 2.5, 3.5]) / 255
  if kind == "binary_ties":  # equal squares: the largest contour is a tie
    m = np.zeros((size, size))
    side = max(2, size // 6)
    for x0, y0 in rng.integers(0, size - side, (rng.integers(2, 4), 2)):
      m[y0:y0 + side, x0:x0 + side] = 1.0
    return m
  if kind == "noise":  # many small contours
    return rng.random((size, size)) ** 3
  raise ValueError(kind)


def records_for(rng, n, maps=None, first_index=0):
  """ImageRecords with random sizes and labels and one to three boxes each.

  With `maps`, the first box is the (jittered) extent of a map's region above a random
  level, scaled to the image size, so IoUs land on both sides of the thresholds.
  """
  out = []
  for i in range(n):
    w, h = (int(v) for v in rng.integers(20, 600, 2))
    boxes = []
    if maps is not None and (maps[i] > 0).any():
      m = maps[i]
      ys, xs = np.nonzero(m >= rng.uniform(0, 1) * m.max())
      size = m.shape[0]
      x0, x1 = (np.array([xs.min(), xs.max() + 1]) + rng.normal(0, 1, 2)) * w / size
      y0, y1 = (np.array([ys.min(), ys.max() + 1]) + rng.normal(0, 1, 2)) * h / size
      x0, x1 = np.clip(np.sort([x0, x1]), 0, w)
      y0, y1 = np.clip(np.sort([y0, y1]), 0, h)
      boxes.append([x0, y0, x1, y1])
    for _ in range(rng.integers(0 if boxes else 1, 3)):
      x0, x1 = np.sort(rng.uniform(0, w, 2))
      y0, y1 = np.sort(rng.uniform(0, h, 2))
      boxes.append([x0, y0, x1, y1])
    out.append(ImageRecord(index=first_index + i, image_id=f"img{first_index + i}.jpg", path="",
                           label=int(rng.integers(0, 10)), width=w, height=h,
                           boxes=np.asarray(boxes, np.float32)))
  return out


def masks_for(rng, maps):
  """(foreground, ignore) pairs correlated with the maps, with overlapping ignore regions."""
  out = []
  for m in maps:
    fg = m + 0.3 * rng.standard_normal(m.shape) > 0.5
    ignore = rng.random(m.shape) < rng.choice([0.0, 0.1, 0.3])
    out.append((fg, ignore))
  return out
