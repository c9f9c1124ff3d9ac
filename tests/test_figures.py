"""Figures of a stage's test evaluation, the summary table and the progress lines."""

import json
import logging as std_logging
import os

import numpy as np
from PIL import Image
import pytest

from fcam_jax import figures, metrics, writers
from fcam_jax.data.records import ImageRecord
from fcam_jax.data.sources import Split

S, SCALE = 16, figures.tile_scale(16)
PURE_RED, PURE_GREEN = (255, 0, 0), (0, 255, 0)


def _rect_map(x0, y0, x1, y1, value=1.0):
  m = np.zeros((S, S), np.float32)
  m[y0:y1 + 1, x0:x1 + 1] = value
  return m


def _px(tile, x, y):
  return tuple(int(c) for c in tile[y, x])


def test_predicted_box_is_the_one_the_evaluator_scores():
  rng = np.random.default_rng(0)
  gt = np.array([[2, 3, 11, 13]])
  for trial in range(60):
    m = rng.random((S, S)) ** 3 if trial % 2 else _rect_map(3, 4, 9, 8) * rng.random((S, S))
    tau = float(rng.random())
    box, _ = figures.predicted_box(m, tau)
    largest, _ = metrics.threshold_ious(metrics.quantize(m), gt, np.array([tau]))
    assert metrics.box_iou(box, gt).max() == pytest.approx(largest[0], abs=1e-12), trial
  # The benchmark's box of a solid rectangle: x0, y0, min(x0 + w, S - 1), min(y0 + h, S - 1).
  box, binary = figures.predicted_box(_rect_map(3, 5, 8, 10), 0.5)
  assert tuple(box) == (3, 5, 9, 11) and binary.sum() == 6 * 6
  box, _ = figures.predicted_box(_rect_map(10, 12, 15, 15), 0.5)
  assert tuple(box) == (10, 12, 15, 15)  # clipped at S - 1
  box, binary = figures.predicted_box(np.zeros((S, S)), 0.3)
  assert tuple(box) == (0, 0, 0, 0) and not binary.any()


def test_box_tile_draws_ground_truth_green_and_prediction_red():
  image = np.zeros((S, S, 3), np.uint8)
  tile = figures.box_tile(image, _rect_map(9, 9, 12, 12), 0.5, np.array([[1, 1, 6, 6]]), SCALE)
  assert tile.shape == (S * SCALE, S * SCALE, 3)
  # Ground truth (1, 1)-(6, 6) covers upsampled pixels 1 * SCALE .. 7 * SCALE - 1: its outline.
  lo, hi, mid = SCALE, 7 * SCALE - 1, 4 * SCALE
  for x, y in ((lo, lo), (mid, lo), (hi, mid), (mid, hi), (lo, mid), (hi, hi)):
    assert _px(tile, x, y) == PURE_GREEN, (x, y)
  # Predicted box (9, 9)-(13, 13) (x + w): top-left and bottom-right corners red.
  assert _px(tile, 9 * SCALE, 9 * SCALE) == PURE_RED
  assert _px(tile, 14 * SCALE - 1, 14 * SCALE - 1) == PURE_RED
  # Inside the binarization (not on an outline): red over black at the overlay alpha.
  r, g, b = _px(tile, 11 * SCALE, 11 * SCALE)
  assert r > 100 and g == 0 and b == 0 and r < 255
  assert _px(tile, 3 * SCALE, 3 * SCALE) == (0, 0, 0)  # inside the GT box, not predicted
  assert _px(tile, 14 * SCALE + 2, 2) == (0, 0, 0)


def test_error_tile_colours_true_false_positives_and_negatives():
  image = np.full((S, S, 3), 40, np.uint8)
  fg = np.zeros((S, S), bool)
  fg[:8] = True                       # object: top half
  m = np.zeros((S, S), np.float32)
  m[:, :8] = 0.9                      # prediction: left half
  m[:, 8:] = 0.4                      # below tau=0.5
  ignore = np.zeros((S, S), bool)
  ignore[0, 0] = True
  tile = figures.error_tile(image, m, 0.5, fg, ignore, SCALE)
  tp, fp = _px(tile, 2 * SCALE, 2 * SCALE), _px(tile, 2 * SCALE, 12 * SCALE)
  fn, tn = _px(tile, 12 * SCALE, 2 * SCALE), _px(tile, 12 * SCALE, 12 * SCALE)
  assert tp[0] > 150 and tp[1] == tp[2] < 40      # red
  assert fp[2] > 150 and fp[0] == fp[1] < 40      # blue
  assert fn[1] > 150 and fn[0] == fn[2] < 40      # green
  assert tn == (40, 40, 40) and _px(tile, 0, 0) == (40, 40, 40)  # true negative, ignored: as is
  # PxAP's rule: a score equal to tau is a prediction.
  edge = figures.error_tile(image, np.full((S, S), 0.5, np.float32), 0.5, fg, None, 1)
  assert _px(edge, 0, 0)[0] > 150 and _px(edge, 0, 12)[2] > 150


def test_recorder_keeps_the_first_images_in_order_and_histograms_every_pixel():
  rec = figures.TestRecorder(("cam", "fcam"), num_images=3, bins=10)
  total = 0
  for b in range(3):
    n = 2
    batch = {"image": np.full((n, S, S, 3), b, np.uint8), "index": np.arange(2 * b, 2 * b + n)}
    cam = np.zeros((n, S, S), np.float32)
    cam[:, :4] = 1.0                  # last bin (1.0 is counted in it)
    cam[:, 4:6] = 0.55                # bin 5
    rec(batch, {"cam": cam, "fcam": np.full((n, S, S), 0.05, np.float32)})
    total += n * S * S
  assert rec.indices == [0, 1, 2]
  assert [int(i[0, 0, 0]) for i in rec.images] == [0, 0, 1]
  assert len(rec.maps["fcam"]) == 3
  for name in ("cam", "fcam"):
    assert rec.hist[name].sum() == total
  assert rec.hist["cam"][9] == 3 * 2 * 4 * S and rec.hist["cam"][5] == 3 * 2 * 2 * S
  assert rec.hist["cam"][0] == total - rec.hist["cam"][9] - rec.hist["cam"][5]
  assert rec.hist["fcam"][0] == total
  # As values for TensorBoard: the same histogram when binned again.
  values = figures.histogram_values(rec.hist["cam"])
  np.testing.assert_array_equal(np.histogram(values, 10, (0, 1))[0], rec.hist["cam"])


def _split(n: int, with_masks: bool = True, with_boxes: bool = True) -> Split:
  records = [ImageRecord(index=i, image_id=f"test/img {i}.png", path="", label=0, width=2 * S,
                         height=2 * S, boxes=np.array([[2, 2, 13, 13]], np.float32))
             for i in range(n)]
  fg = np.zeros((S, S), bool)
  fg[1:7, 1:7] = True
  loader = (lambda i: (fg, np.zeros((S, S), bool))) if with_masks else None
  return Split("test", [None] * n, records, mask_loader=loader, has_boxes=with_boxes)


def _test_metrics(shift: float):
  tau = np.arange(0, 1, 0.1)
  m = {"MaxBoxAcc": 50.0 + shift, "best_tau_MaxBoxAcc": 0.5, "curve_tau": tau.tolist(),
       "PxAP": 40.0 + shift, "curve_precision": [1.0, 0.5], "curve_recall": [0.2, 1.0]}
  for d in (30, 50, 70):
    m[f"curve_BoxAcc@{d}"] = (100 * (1 - tau)).tolist()
    m[f"curve_BoxAccV2@{d}"] = (100 * tau).tolist()
  return m


class _Recording(writers.JsonlWriter):
  def __init__(self, logdir):
    super().__init__(logdir, log=False)
    self.images = {}

  def write_images(self, step, images):
    self.images.update(images)


def test_write_stage_figures_saves_panels_plots_and_histograms(tmp_path):
  n = 3
  rec = figures.TestRecorder(("cam", "fcam"), num_images=2)
  image = np.zeros((n, S, S, 3), np.uint8)
  cam = np.stack([_rect_map(9, 9, 12, 12)] * n)
  rec({"image": image, "index": np.arange(n)}, {"cam": cam, "fcam": cam * 0.8})
  writer = _Recording(str(tmp_path))
  paths = figures.write_stage_figures(
      str(tmp_path / "figures"), rec, {"cam": _test_metrics(0), "fcam": _test_metrics(10)},
      _split(n), iou_thresholds=(30, 50, 70), writer=writer, step=7, prefix="stage2/")
  names = sorted(os.path.relpath(p, tmp_path / "figures") for p in paths)
  assert names == ["activations.png", "box_accuracy.png", "pr_curve.png",
                   "samples/00_test_img_0.png", "samples/01_test_img_1.png", "samples_grid.png"]
  tile = S * SCALE
  width = 7 * tile + 6 * figures.GAP   # image + (heat, boxes, TP/FP/FN) x (CAM, F-CAM)
  one = np.asarray(Image.open(paths[0]).convert("RGB"))
  assert one.shape[1] == width and one.shape[0] > tile
  panels = one[-tile:]
  # The CAM's box column (third): GT (2, 2, 13, 13) in original pixels = (1, 1, 6, 6) here.
  x_box = 2 * (tile + figures.GAP)
  assert _px(panels, x_box + SCALE, SCALE) == PURE_GREEN
  assert _px(panels, x_box + 9 * SCALE, 9 * SCALE) == PURE_RED
  # The CAM's TP/FP/FN column: the mask (1..6) is missed (green), the prediction is FP (blue).
  x_err = 3 * (tile + figures.GAP)
  fn, fp = _px(panels, x_err + 3 * SCALE, 3 * SCALE), _px(panels, x_err + 10 * SCALE, 10 * SCALE)
  assert fn[1] > 150 and fn[0] == fn[2] == 0 and fp[2] > 150 and fp[0] == fp[1] == 0
  grid = np.asarray(Image.open(tmp_path / "figures" / "samples_grid.png").convert("RGB"))
  assert grid.shape[1] == width and grid.shape[0] > 2 * tile + figures.GAP
  np.testing.assert_array_equal(grid[-tile:], panels)  # last row: the second image's panels
  for name in ("box_accuracy", "pr_curve", "activations"):
    img = Image.open(tmp_path / "figures" / f"{name}.png")
    assert img.size[0] >= 400 and img.size[1] >= 300
    assert writer.images[f"stage2/figures/{name}"].shape == (1, img.size[1], img.size[0], 3)
  assert writer.images["stage2/figures/samples"].dtype == np.uint8
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  hists = [l["histograms"] for l in lines if "histograms" in l][0]
  assert sum(hists["stage2/test/cam/activations"]["counts"]) == n * S * S


def test_figures_without_boxes_or_without_masks(tmp_path):
  rec = figures.TestRecorder(("cam",), num_images=1)
  rec({"image": np.zeros((1, S, S, 3), np.uint8), "index": np.arange(1)},
      {"cam": _rect_map(2, 2, 5, 5)[None]})
  masks_only = {k: v for k, v in _test_metrics(0).items() if "Box" not in k and k != "curve_tau"}
  paths = figures.write_stage_figures(str(tmp_path / "a"), rec, {"cam": masks_only},
                                      _split(1, with_boxes=False), iou_thresholds=(50,))
  assert sorted(os.path.basename(p) for p in paths) == [
      "00_test_img_0.png", "activations.png", "pr_curve.png", "samples_grid.png"]
  tile = S * SCALE
  assert Image.open(paths[0]).size[0] == 3 * tile + 2 * figures.GAP  # image, heat, TP/FP/FN
  boxes_only = {k: v for k, v in _test_metrics(0).items() if "curve_p" not in k and k != "PxAP"}
  paths = figures.write_stage_figures(str(tmp_path / "b"), rec, {"cam": boxes_only},
                                      _split(1, with_masks=False), iou_thresholds=(50,))
  assert "box_accuracy.png" in [os.path.basename(p) for p in paths]
  assert "pr_curve.png" not in [os.path.basename(p) for p in paths]
  assert Image.open(paths[0]).size[0] == 3 * tile + 2 * figures.GAP  # image, heat, boxes


def _table_rows(table: str):
  rows = {}
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 2 + len(figures.SUMMARY_KEYS) and cells[0] in ("stage1", "stage2"):
      rows[(cells[0], cells[1])] = dict(zip(figures.SUMMARY_KEYS, cells[2:]))
  return rows


def test_summary_table_compares_cam_and_fcam():
  cam = {"MaxBoxAcc": 54.5, "MaxBoxAccV2": 54.25, "PxAP": 64.9, "top1_loc": 50.0,
         "top5_loc": 54.0, "top1_cls": 99.5}
  fcam = {**cam, "MaxBoxAcc": 85.0, "PxAP": 75.0}
  results = {"config": {"dataset": {"name": "CUB"}, "model": {"backbone": "vgg16"},
                        "cam": {"method": "gradcam"}},
             "stage1": {"test": {"cam": {**cam, "PxAP": None}}},
             "stage2": {"test": {"cam": cam, "fcam": fcam}}}
  table = figures.summary_table(results)
  assert "CUB" in table and "vgg16" in table and "GradCAM" in table
  rows = _table_rows(table)
  assert rows[("stage1", "GradCAM")]["MaxBoxAcc"] == "54.50"
  assert rows[("stage1", "GradCAM")]["PxAP"] == "-"
  assert rows[("stage2", "F-CAM")]["PxAP"] == "75.00"
  diff = rows[("stage2", "F-CAM - GradCAM")]
  assert diff["MaxBoxAcc"] == "+30.50" and diff["PxAP"] == "+10.10" and diff["top1_cls"] == "+0.00"
  stage1_only = figures.summary_table({"stage1": results["stage1"]})
  assert len(_table_rows(stage1_only)) == 1


def _absl_records(caplog):
  caplog.set_level(std_logging.INFO)
  return lambda: "\n".join(r.getMessage() for r in caplog.records)


def test_eval_progress_logs_batches_images_per_second_and_eta(caplog):
  logs = _absl_records(caplog)
  clock = iter([0.0, 1.0, 2.0, 2.5, 100.0]).__next__
  progress = writers.EvalProgress("stage1 test", total_batches=10, every_secs=1.5, clock=clock)
  assert progress(1, 8) is None            # the first batch only starts the clock
  assert progress(2, 16) is None           # 1 s < every_secs
  message = progress(3, 24)                # 2 batches, 16 images in 2 s; 7 batches left
  assert message == "stage1 test: 3/10 batches, 8.0 images/s, ETA 00:00:07"
  assert message in logs()
  assert progress(4, 32) is None
  assert "4/10" not in logs()
  assert "10/10 batches" in progress(10, 80)   # the end, once something was logged


def test_training_progress_logs_steps_per_second_and_eta(caplog, monkeypatch):
  """clu's ReportProgress with TensorFlow, the plain stand-in without."""
  logs = _absl_records(caplog)
  seen, has_tf = set(), writers.have_tensorflow()
  for tensorflow in (False, True) if has_tf else (False,):
    monkeypatch.setattr(writers, "have_tensorflow", lambda tf=tensorflow: tf)
    caplog.clear()
    progress = writers.report_progress(100, None, every_steps=2)
    for step, t in ((0, 0.0), (1, 0.5), (2, 1.0)):
      progress(step, t=t)
    line = [l for l in logs().splitlines() if "steps/s" in l]
    # 2 steps in 1 s; 98 steps left.
    assert line and "2.0 steps/s" in line[0] and "(2/100)" in line[0], (tensorflow, logs())
    assert "ETA: " + ("0m" if tensorflow else "00:00:49") in line[0], line[0]
    seen.add(tensorflow)
  assert seen == ({False, True} if has_tf else {False})
