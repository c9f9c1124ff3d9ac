"""What a stage's test evaluation shows: the paper's figures and the end-of-run table.

* Sample panels (Figs. 3-4): one row per test image: the image, then per map (CAM,
  and in stage 2 the F-CAM) its heat map, its localization at the map's
  `best_tau_MaxBoxAcc` (the evaluator's binarization in red, ground-truth boxes
  green, the evaluator's predicted box red), and where the split has masks the
  pixels at `MASK_TAU` (PxAP's rule `score >= tau`) coloured TP red, FP blue, FN
  green. PxAP has no best threshold; a fixed one shared by CAM and F-CAM compares
  them as the paper's Fig. 4 does (it uses 0.8).
* Localization accuracy vs threshold (Figs. 5-7): BoxAcc and BoxAccV2 at each IoU
  threshold, and the PxAP precision-recall curve, from the test metrics' curves.
* Activation distributions (Fig. 8): fixed-bin histograms of all test maps' values.

`TestRecorder` keeps what the figures need while the evaluator's batches pass (no
second pass); `write_stage_figures` draws and saves them. Image panels are composed
in numpy pixel by pixel (so the PNG is exactly what was scored, nearest-upsampled);
plots use matplotlib's Agg canvas directly (no pyplot, no display).
"""

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
from PIL import Image

from fcam_jax import cams
from fcam_jax import metrics as metrics_lib

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
MASK_TAU = 0.5       # threshold of the TP/FP/FN panels
HIST_BINS = 100      # activation histogram: bins over [0, 1]
ALPHA = 0.5          # overlay opacity of heat maps and binarizations (the paper's sigma = 50%)
ERROR_ALPHA = 0.7    # of the TP/FP/FN colours
WRITER_BUCKETS = 30  # histogram buckets sent to the metric writer
GAP = 4              # white pixels between panels
MIN_TILE = 128       # panels are upsampled (nearest, integer factor) to at least this side
SUMMARY_KEYS = metrics_lib.REPORTED
COLORS = {"cam": "tab:orange", "fcam": "tab:green"}  # as the paper's Figs. 7-8
IOU_STYLES = {30: ":", 50: "-", 70: "--"}


def map_labels(method: str) -> Dict[str, str]:
  """Display names of the evaluated maps: the stage-1 method's, and F-CAM."""
  return {"cam": cams.DISPLAY_NAMES.get(method, method), "fcam": "F-CAM"}


def histogram(maps, bins: int = HIST_BINS) -> np.ndarray:
  """Counts of map values in `bins` equal bins over [0, 1] (1.0 in the last one)."""
  return np.histogram(np.asarray(maps, np.float32), bins=bins, range=(0.0, 1.0))[0].astype(np.int64)


class TestRecorder:
  """Collects, from the evaluated batches, the first `num_images` images with their
  maps (in the order they pass) and a histogram of every map's values.

  Called as `recorder(batch, maps)` with the batch's valid entries only
  (`batch['image']` (B, S, S, 3) uint8, `batch['index']` (B,)) and `maps` name ->
  (B, S, S) in [0, 1].
  """

  def __init__(self, names: Sequence[str], num_images: int, bins: int = HIST_BINS):
    self.names = tuple(names)
    self.num_images = int(num_images)
    self.bins = int(bins)
    self.hist = {n: np.zeros(self.bins, np.int64) for n in self.names}
    self.images, self.indices = [], []
    self.maps = {n: [] for n in self.names}

  def __call__(self, batch: Mapping[str, np.ndarray], maps: Mapping[str, np.ndarray]):
    for n in self.names:
      self.hist[n] += histogram(maps[n], self.bins)
    take = min(self.num_images - len(self.indices), len(batch["index"]))
    if take > 0:
      self.images.extend(np.asarray(batch["image"][:take], np.uint8))
      self.indices.extend(int(i) for i in batch["index"][:take])
      for n in self.names:
        self.maps[n].extend(np.asarray(maps[n][:take], np.float32))


# --- image panels -------------------------------------------------------------------


def predicted_box(scoremap, tau: float) -> Tuple[np.ndarray, np.ndarray]:
  """The evaluator's box at threshold tau ((0, 0, 0, 0) without a contour) and its
  binarization (docs/design.md §9; `metrics.largest_contour_box`)."""
  q = metrics_lib.quantize(scoremap)
  box = metrics_lib.largest_contour_box(q, tau)
  return (np.zeros(4, np.int64) if box is None else box), metrics_lib.binarize(q, tau)


def tile_scale(size: int) -> int:
  return max(1, -(-MIN_TILE // int(size)))


def _up(x: np.ndarray, scale: int) -> np.ndarray:
  return np.repeat(np.repeat(x, scale, axis=0), scale, axis=1) if scale > 1 else x


def _blend(image: np.ndarray, color, where: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
  """`image` with `color` laid over the pixels `where` at opacity alpha."""
  out = image.astype(np.float32)
  out[where] = (1 - alpha) * out[where] + alpha * np.asarray(color, np.float32)
  return np.rint(out).astype(np.uint8)


def draw_box(tile: np.ndarray, box, color, scale: int, width: int = 2) -> np.ndarray:
  """Outlines the map-pixel box x0y0x1y1 (inclusive) on a tile upsampled by `scale`, in place."""
  h, w = tile.shape[:2]
  x0, y0, x1, y1 = (int(v) for v in box)
  top, left = max(y0 * scale, 0), max(x0 * scale, 0)
  bottom, right = min((y1 + 1) * scale, h), min((x1 + 1) * scale, w)
  if bottom <= top or right <= left:
    return tile
  t = max(1, min(width, bottom - top, right - left))
  tile[top:top + t, left:right] = color
  tile[bottom - t:bottom, left:right] = color
  tile[top:bottom, left:left + t] = color
  tile[top:bottom, right - t:right] = color
  return tile


def heat_tile(image: np.ndarray, scoremap: np.ndarray, scale: int) -> np.ndarray:
  """The map in the 'jet' colormap over the image."""
  heat = matplotlib.colormaps["jet"](np.clip(scoremap, 0, 1))[..., :3] * 255
  out = (1 - ALPHA) * image.astype(np.float32) + ALPHA * heat
  return _up(np.rint(out).astype(np.uint8), scale)


def box_tile(image: np.ndarray, scoremap: np.ndarray, tau: float, gt_boxes, scale: int
             ) -> np.ndarray:
  """Binarization at tau in red, ground-truth boxes green, the predicted box red."""
  box, binary = predicted_box(scoremap, tau)
  tile = _up(_blend(image, RED, binary), scale)
  width = max(2, scale // 2)
  for gt in np.asarray(gt_boxes).reshape(-1, 4):
    draw_box(tile, gt, GREEN, scale, width)
  return draw_box(tile, box, RED, scale, width)


def error_tile(image: np.ndarray, scoremap: np.ndarray, tau: float, foreground: np.ndarray,
               ignore: Optional[np.ndarray], scale: int) -> np.ndarray:
  """Pixels with score >= tau against the mask: TP red, FP blue, FN green (ignore: as is)."""
  pred = np.asarray(scoremap) >= tau
  fg = np.asarray(foreground, bool)
  scored = ~np.asarray(ignore, bool) if ignore is not None else np.ones_like(fg)
  out = image
  for where, color in ((pred & fg, RED), (pred & ~fg, BLUE), (~pred & fg, GREEN)):
    out = _blend(out, color, where & scored, ERROR_ALPHA)
  return _up(out, scale)


def _hstack(tiles: Sequence[np.ndarray]) -> np.ndarray:
  h = tiles[0].shape[0]
  gap = np.full((h, GAP, 3), 255, np.uint8)
  parts = []
  for t in tiles:
    parts += [t, gap]
  return np.concatenate(parts[:-1], axis=1)


def sample_row(image: np.ndarray, maps: Mapping[str, np.ndarray], *,
               box_taus: Optional[Mapping[str, float]] = None, gt_boxes=None,
               foreground: Optional[np.ndarray] = None, ignore: Optional[np.ndarray] = None,
               mask_tau: float = MASK_TAU, scale: int = 1) -> np.ndarray:
  """One image's panels side by side: the image, then per map its heat map, its boxes
  at box_taus[name] (if given) and its TP/FP/FN pixels (if a foreground mask is given)."""
  image = np.asarray(image, np.uint8)
  tiles = [_up(image, scale)]
  for name, m in maps.items():
    m = np.asarray(m, np.float32)
    if m.shape != image.shape[:2]:
      raise ValueError(f"map {name} is {m.shape}; the image is {image.shape[:2]}")
    tiles.append(heat_tile(image, m, scale))
    if box_taus is not None:
      tiles.append(box_tile(image, m, box_taus[name], gt_boxes, scale))
    if foreground is not None:
      tiles.append(error_tile(image, m, mask_tau, foreground, ignore, scale))
  return _hstack(tiles)


def column_labels(names: Sequence[str], labels: Mapping[str, str],
                  box_taus: Optional[Mapping[str, float]], has_masks: bool,
                  mask_tau: float = MASK_TAU) -> List[str]:
  out = ["image"]
  for n in names:
    out.append(labels.get(n, n))
    if box_taus is not None:
      out.append(f"{labels.get(n, n)} box, τ={box_taus[n]:.3g}")
    if has_masks:
      out.append(f"{labels.get(n, n)} TP/FP/FN, τ={mask_tau:g}")
  return out


def _render(fig: Figure) -> np.ndarray:
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def header(labels: Sequence[str], tile: int, caption: str = "", width: Optional[int] = None
           ) -> np.ndarray:
  """A white strip with `labels` centred over columns of `tile` px (GAP apart) and an
  optional caption line above them; exactly `width` px wide."""
  width = width or len(labels) * (tile + GAP) - GAP
  line = 16
  height = line * (2 if caption else 1)
  fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
  fontsize = 7 if tile < 200 else 8
  for i, text in enumerate(labels):
    fig.text((i * (tile + GAP) + tile / 2) / width, 0.5 * line / height, text, ha="center",
             va="center", fontsize=fontsize)
  if caption:
    fig.text(0.5 * GAP / width, 1 - 0.5 * line / height, caption, ha="left", va="center",
             fontsize=fontsize)
  strip = _render(fig)[:height, :width]
  pad = ((0, height - strip.shape[0]), (0, width - strip.shape[1]), (0, 0))
  return np.pad(strip, pad, constant_values=255)


def save_png(path: str, array: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)
  return path


# --- plots --------------------------------------------------------------------------


def box_accuracy_figure(test: Mapping[str, Mapping], iou_thresholds: Sequence[int],
                        labels: Mapping[str, str]) -> np.ndarray:
  """BoxAcc (largest contour) and BoxAccV2 (all contours) vs tau per IoU threshold."""
  fig = Figure(figsize=(10, 4), dpi=100, facecolor="white")
  axes = fig.subplots(1, 2)
  for ax, key, title in ((axes[0], "curve_BoxAcc", "BoxAcc (largest contour: MaxBoxAcc)"),
                         (axes[1], "curve_BoxAccV2", "BoxAccV2 (all contours: MaxBoxAccV2)")):
    for name, m in test.items():
      tau = np.asarray(m["curve_tau"])
      for d in iou_thresholds:
        acc = np.asarray(m[f"{key}@{d}"])
        i = int(np.argmax(acc))
        line, = ax.plot(tau, acc, IOU_STYLES.get(d, "-."), color=COLORS.get(name),
                        label=f"{labels.get(name, name)} IoU {d}% (max {acc[i]:.1f})")
        ax.plot(tau[i], acc[i], "o", color=line.get_color(), markersize=4)
    ax.set(title=title, xlabel="threshold τ", ylabel="% of images", xlim=(0, 1), ylim=(0, 101))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return _render(fig)


def pr_figure(test: Mapping[str, Mapping], labels: Mapping[str, str]) -> np.ndarray:
  """The PxAP precision-recall curve of each map."""
  fig = Figure(figsize=(5, 4), dpi=100, facecolor="white")
  ax = fig.subplots()
  for name, m in test.items():
    ax.plot(m["curve_recall"], m["curve_precision"], color=COLORS.get(name),
            label=f"{labels.get(name, name)} (PxAP {m['PxAP']:.1f})")
  ax.set(title="pixel precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1),
         ylim=(0, 1.01))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _render(fig)


def histogram_figure(hist: Mapping[str, np.ndarray], labels: Mapping[str, str]) -> np.ndarray:
  """The distribution of activation values (% of test pixels per bin)."""
  fig = Figure(figsize=(5, 4), dpi=100, facecolor="white")
  ax = fig.subplots()
  for name, counts in hist.items():
    counts = np.asarray(counts, np.float64)
    edges = np.linspace(0, 1, len(counts) + 1)
    ax.stairs(100 * counts / max(counts.sum(), 1), edges, color=COLORS.get(name), fill=True,
              alpha=0.4, label=labels.get(name, name))
  ax.set(title="activations over the test set", xlabel="activation", ylabel="% of pixels",
         xlim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _render(fig)


def histogram_values(counts: np.ndarray, max_values: int = 1_000_000) -> np.ndarray:
  """The histogram over [0, 1] as values, for writers that histogram raw arrays
  (TensorBoard): each bin's count (scaled down to ~max_values in all) spread evenly
  over the bin, so any re-binning stays smooth."""
  counts = np.asarray(counts, np.int64)
  total = int(counts.sum())
  if total > max_values:
    counts = np.rint(counts * (max_values / total)).astype(np.int64)
  width = 1.0 / len(counts)
  starts = np.repeat(np.cumsum(counts) - counts, counts)
  rank = np.arange(int(counts.sum())) - starts
  bins = np.repeat(np.arange(len(counts)), counts)
  return ((bins + (rank + 0.5) / np.repeat(counts, counts)) * width).astype(np.float32)


# --- a stage's figures --------------------------------------------------------------


def _file_name(i: int, image_id: str) -> str:
  stem = os.path.splitext(image_id)[0]
  return f"{i:02d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)[-80:]}.png"


def write_stage_figures(out_dir: str, recorder: TestRecorder, test: Mapping[str, Mapping],
                        split, *, iou_thresholds: Sequence[int], method: str = "cam",
                        writer=None, step: int = 0, prefix: str = "") -> List[str]:
  """Draws a stage's test figures into out_dir (and `writer`); returns the PNG paths.

  `test` is the stage's test metrics (name -> metrics), `split` the test Split (its
  records give the ground-truth boxes, its mask_loader the masks).
  """
  labels = map_labels(method)
  names = [n for n in recorder.names if n in test]
  test = {n: test[n] for n in names}
  has_boxes = all("best_tau_MaxBoxAcc" in m for m in test.values())
  has_masks = split.mask_loader is not None
  paths, images = [], {}
  if recorder.indices:
    size = recorder.images[0].shape[0]
    scale = tile_scale(size)
    box_taus = {n: test[n]["best_tau_MaxBoxAcc"] for n in names} if has_boxes else None
    records = {r.index: r for r in split.records}
    cols = column_labels(names, labels, box_taus, has_masks)
    rows = []
    for i, (index, image) in enumerate(zip(recorder.indices, recorder.images)):
      rec = records[index]
      gt = (metrics_lib.scale_boxes(rec.boxes, rec.width, rec.height, size)
            if has_boxes else None)
      fg, ignore = split.mask_loader(index) if has_masks else (None, None)
      row = sample_row(image, {n: recorder.maps[n][i] for n in names}, box_taus=box_taus,
                       gt_boxes=gt, foreground=fg, ignore=ignore, scale=scale)
      rows.append(row)
      top = header(cols, size * scale, caption=rec.image_id, width=row.shape[1])
      paths.append(save_png(os.path.join(out_dir, "samples", _file_name(i, rec.image_id)),
                            np.concatenate([top, row])))
    legend = "; ".join((["boxes: GT green, predicted red"] if has_boxes else [])
                       + (["pixels: TP red, FP blue, FN green"] if has_masks else []))
    white = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([header(cols, size * scale, caption=legend, width=rows[0].shape[1])]
                          + [p for r in rows for p in (r, white)][:-1])
    images["samples"] = grid
    paths.append(save_png(os.path.join(out_dir, "samples_grid.png"), grid))
  if has_boxes:
    images["box_accuracy"] = box_accuracy_figure(test, iou_thresholds, labels)
    paths.append(save_png(os.path.join(out_dir, "box_accuracy.png"), images["box_accuracy"]))
  if all("curve_precision" in m for m in test.values()):
    images["pr_curve"] = pr_figure(test, labels)
    paths.append(save_png(os.path.join(out_dir, "pr_curve.png"), images["pr_curve"]))
  hist = {n: recorder.hist[n] for n in names}
  images["activations"] = histogram_figure(hist, labels)
  paths.append(save_png(os.path.join(out_dir, "activations.png"), images["activations"]))
  if writer is not None:
    writer.write_images(step, {f"{prefix}figures/{k}": v[None] for k, v in images.items()})
    keys = {n: f"{prefix}test/{n}/activations" for n in names}
    writer.write_histograms(step, {keys[n]: histogram_values(hist[n]) for n in names},
                            num_buckets={keys[n]: WRITER_BUCKETS for n in names})
  return paths


# --- the end-of-run table -----------------------------------------------------------


def _fmt(v, signed: bool = False) -> str:
  if v is None:
    return "-"
  return f"{v:+.2f}" if signed else f"{v:.2f}"


def summary_table(results: Mapping) -> str:
  """Markdown table of the test metrics: stage-1 map; stage-2 baseline, F-CAM, difference."""
  cfg = results.get("config", {})
  label = map_labels(cfg.get("cam", {}).get("method", "cam"))["cam"]
  dataset = cfg.get("dataset", {}).get("name", "?")
  title = f"{dataset}, {cfg.get('model', {}).get('backbone', '?')}, {label}: test metrics (%)"
  lines = [f"### {title}", "", "| stage | map | " + " | ".join(SUMMARY_KEYS) + " |",
           "|---|---|" + "---:|" * len(SUMMARY_KEYS)]

  def row(stage, name, values, signed=False):
    lines.append(f"| {stage} | {name} | " + " | ".join(_fmt(values.get(k), signed)
                                                        for k in SUMMARY_KEYS) + " |")

  if "stage1" in results:
    row("stage1", label, results["stage1"]["test"]["cam"])
  if "stage2" in results:
    test = results["stage2"]["test"]
    row("stage2", f"{label} (baseline)", test["cam"])
    row("stage2", "F-CAM", test["fcam"])
    diff = {k: test["fcam"][k] - test["cam"][k] for k in SUMMARY_KEYS
            if test["fcam"].get(k) is not None and test["cam"].get(k) is not None}
    row("stage2", f"F-CAM - {label}", diff, signed=True)
  return "\n".join(lines) + "\n"
