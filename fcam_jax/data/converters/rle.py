"""COCO segmentations -> bool masks: run-length encodings (both forms) and polygons.

RLE: `{"size": [h, w], "counts": ...}` runs of 0s and 1s over the pixels in column-major
(Fortran) order, starting with a run of 0s (possibly empty). `counts` is either a list
of run lengths (uncompressed, as COCO stores crowd regions) or COCO's compressed string:
each run is written in 5-bit groups, least significant first, one character
(48 + group) each, bit 0x20 = more groups follow, bit 0x10 of the last group = negative;
from the fourth run on, the value stored is the difference to the run two before.

Polygons `[[x1, y1, x2, y2, ...], ...]` are in continuous pixel coordinates (pixel (i, j)
spans [i, i+1) x [j, j+1)): a pixel is foreground when its centre (i + 0.5, j + 0.5) is
inside the polygon (even-odd rule; a centre exactly on a left edge is inside, on a right
edge outside), and an annotation's polygons are united. This samples the polygon as
COCO's own rasterizer does up to its boundary rounding: pixels along an edge can differ.
"""

from typing import List, Sequence

import numpy as np


def decode_counts(counts: Sequence[int], height: int, width: int) -> np.ndarray:
  """bool (height, width) from run lengths (0s first, column-major)."""
  counts = np.asarray(counts, np.int64)
  if counts.ndim != 1 or (counts < 0).any():
    raise ValueError("RLE counts must be a list of non-negative integers")
  if int(counts.sum()) != height * width:
    raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {height}x{width} = "
                     f"{height * width} pixels")
  values = (np.arange(len(counts)) % 2).astype(bool)
  return np.repeat(values, counts).reshape(width, height).T


def string_to_counts(text: str) -> List[int]:
  """COCO's compressed RLE string -> run lengths."""
  counts: List[int] = []
  p = 0
  while p < len(text):
    x, k, more = 0, 0, True
    while more:
      if p >= len(text):
        raise ValueError(f"compressed RLE string ends inside a run (at character {p})")
      c = ord(text[p]) - 48
      if not 0 <= c < 64:
        raise ValueError(f"compressed RLE string has character {text[p]!r} at {p}")
      x |= (c & 0x1F) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and c & 0x10:
        x |= -1 << (5 * k)
    if len(counts) > 2:
      x += counts[-2]
    counts.append(x)
  return counts


def counts_to_string(counts: Sequence[int]) -> str:
  """Run lengths -> COCO's compressed RLE string (the inverse of string_to_counts)."""
  out = []
  for i, c in enumerate(counts):
    x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
    more = True
    while more:
      group = x & 0x1F
      x >>= 5
      more = x != -1 if group & 0x10 else x != 0
      out.append(chr(48 + (group | 0x20 if more else group)))
  return "".join(out)


def mask_to_counts(mask: np.ndarray) -> List[int]:
  """bool (h, w) -> run lengths (0s first, column-major)."""
  flat = np.asarray(mask, bool).flatten(order="F")
  edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  bounds = np.concatenate([[0], edges, [flat.size]])
  runs = np.diff(bounds).tolist()
  return ([0] + runs) if flat.size and flat[0] else runs


def decode(rle: dict, height: int, width: int) -> np.ndarray:
  """bool (height, width) from an RLE dict of either form."""
  counts = rle["counts"]
  if isinstance(counts, str):
    counts = string_to_counts(counts)
  return decode_counts(counts, height, width)


def polygons(polys: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
  """bool (height, width): the union of the polygons, sampled at pixel centres."""
  mask = np.zeros((height, width), bool)
  for poly in polys:
    mask |= _polygon(np.asarray(poly, np.float64).reshape(-1, 2), height, width)
  return mask


def _polygon(pts: np.ndarray, height: int, width: int) -> np.ndarray:
  """One polygon by scanlines: per row centre, the edge crossings, filled pairwise."""
  mask = np.zeros((height, width), bool)
  if len(pts) < 3:
    return mask
  xa, ya = pts[:, 0], pts[:, 1]
  xb, yb = np.roll(xa, -1), np.roll(ya, -1)
  lo = max(0, int(np.floor(ya.min())) - 1)
  hi = min(height, int(np.ceil(ya.max())) + 1)
  if lo >= hi:
    return mask
  yc = np.arange(lo, hi, dtype=np.float64)[:, None] + 0.5  # (R, 1) row centres
  crosses = (ya <= yc) != (yb <= yc)  # (R, E): edge spans the row centre, half-open
  with np.errstate(divide="ignore", invalid="ignore"):
    x = xa + (yc - ya) * (xb - xa) / (yb - ya)
  x = np.sort(np.where(crosses, x, np.inf), axis=1)
  if x.shape[1] % 2:  # crossings come in pairs; pad the odd column of infinities
    x = np.concatenate([x, np.full((len(x), 1), np.inf)], axis=1)
  left, right = x[:, 0::2], x[:, 1::2]
  # Pixel i is inside a span [l, r) when l <= i + 0.5 < r: i in [ceil(l - .5), ceil(r - .5)).
  start = np.clip(np.ceil(np.nan_to_num(left - 0.5, posinf=width)), 0, width).astype(np.int64)
  stop = np.clip(np.ceil(np.nan_to_num(right - 0.5, posinf=width)), 0, width).astype(np.int64)
  diff = np.zeros((hi - lo, width + 1), np.int64)
  rows = np.broadcast_to(np.arange(hi - lo)[:, None], start.shape)
  np.add.at(diff, (rows, start), 1)
  np.add.at(diff, (rows, stop), -1)
  mask[lo:hi] = np.cumsum(diff, axis=1)[:, :width] > 0
  return mask
