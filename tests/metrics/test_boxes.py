"""BoxEvaluator: hand-computed golden cases, and count-for-count equality with the
per-threshold definition (tests/metrics/straightforward.py) on many random maps."""

import json

import cv2
import numpy as np
import pytest

from fcam_jax.data.records import ImageRecord
from fcam_jax.metrics import BoxEvaluator, box_iou, quantize, scale_boxes

from . import random_maps
from . import straightforward

S = 224
TAUS = np.arange(0, 1, 0.001)


def record(boxes, index=0, width=S, height=S, label=0):
  return ImageRecord(index=index, image_id=f"im{index}.jpg", path="", label=label, width=width,
                     height=height, boxes=np.asarray(boxes, np.float32).reshape(-1, 4))


def evaluate(maps, records, logits=None, size=S, **kw):
  ev = BoxEvaluator(records, map_size=size, **kw)
  ev.update(np.stack(maps), np.array([r.index for r in records]), logits)
  return ev.compute()


def block(y0, y1, x0, x1, value=1.0, size=S, base=None):
  m = np.zeros((size, size)) if base is None else base
  m[y0:y1, x0:x1] = value
  return m


def test_perfect_20x20_map_has_iou_0907():
  # Pixels x 60..79, y 50..69: the contour's rect is x=60, w=20, so the box runs to
  # x + w = 80 (one pixel wider); inclusive IoU = 20*20 / (21*21) = 0.907.
  assert box_iou([[60, 50, 80, 70]], [[60, 50, 79, 69]])[0, 0] == pytest.approx(400 / 441)
  # GT given in a 448 x 448 image: int(159 * 224 / 448) = int(79.5) = 79, same box.
  for rec in (record([60, 50, 79, 69]), record([120, 100, 159, 139], width=448, height=448)):
    out = evaluate([block(50, 70, 60, 80)], [rec], iou_thresholds=(50, 90, 91))
    assert out["MaxBoxAcc"] == 100.0
    assert out["MaxBoxAccV2@90"] == 100.0 and out["MaxBoxAccV2@91"] == 0.0
    assert out["MaxBoxAcc@91"] == 0.0
    assert out["MaxBoxAccV2"] == pytest.approx(200 / 3)


def test_gt_scaling_truncates_both_corners():
  # 10.9 * 224 / 100 = 24.4 -> 24; 99.9 * 224 / 100 = 223.8 -> 223; 0.99 * 224 / 100 -> 2
  np.testing.assert_array_equal(scale_boxes([[10.9, 0.99, 99.9, 50.0]], 100, 100, 224),
                                [[24, 2, 223, 112]])


def test_quantization_truncates_in_float64():
  # (100 - 1e-9) / 255 * 255 is just below 100 in float64: uint8 99 (float32 would say 100).
  values = np.array([0.0, 1.0, 0.5, (100 - 1e-9) / 255, 2.5 / 255])
  np.testing.assert_array_equal(quantize(values), [0, 255, 127, 99, 2])
  assert int(np.float32(values[3]) * np.float32(255)) == 100


def test_no_contour_gives_the_one_pixel_box_at_the_origin():
  zero = np.zeros((S, S))
  faint = np.full((S, S), 0.003)  # below 1/255: uint8 0 everywhere, no contour either
  for m in (zero, faint):
    # box (0,0,0,0) vs GT (0,0,0,0): IoU 1; vs GT (0,0,1,0): IoU 1/2.
    assert evaluate([m], [record([0, 0, 0, 0])])["MaxBoxAcc"] == 100.0
    out = evaluate([m], [record([0, 0, 1, 0])], iou_thresholds=(30, 50, 70))
    assert (out["MaxBoxAccV2@30"], out["MaxBoxAccV2@50"], out["MaxBoxAccV2@70"]) == (100, 100, 0)
    # A GT anywhere else never matches.
    assert evaluate([m], [record([10, 10, 50, 50])])["MaxBoxAccV2"] == 0.0


def test_tiny_max_binarizes_against_int_tau_times_max():
  # uint8 levels: A = 2 (10 x 10), B = 1 (30 x 30). int(tau * 2) is 0 for tau < 0.5:
  # foreground A and B, largest B; from tau = 0.5 only A.
  m = block(100, 130, 120, 150, 1.5 / 255, base=block(20, 30, 20, 30, 2.5 / 255))
  out = evaluate([m], [record([20, 20, 29, 29])])
  curve = np.array(out["curve_BoxAcc@50"])
  assert out["MaxBoxAcc"] == 100.0 and out["best_tau_MaxBoxAcc"] == 0.5
  assert (curve[:500] == 0).all() and (curve[500:] == 100).all()
  # All contours: A's box is there at every tau.
  assert np.all(np.array(out["curve_BoxAccV2@50"]) == 100) and out["best_tau_MaxBoxAccV2@50"] == 0


def test_multimodal_map_and_multiple_gt_boxes():
  # A = 1.0 on 10 x 10, B = 0.5 (uint8 127) on 30 x 30. B is foreground while
  # int(tau * 255) < 127, i.e. for tau <= 0.498 (499 thresholds), and is then the largest.
  m = block(100, 130, 120, 150, 0.5, base=block(20, 30, 20, 30, 1.0))
  a, b = [20, 20, 29, 29], [120, 100, 149, 129]
  out = evaluate([m], [record([a])])
  curve = np.array(out["curve_BoxAcc@50"])
  assert (curve[:499] == 0).all() and (curve[499:] == 100).all()
  assert out["best_tau_MaxBoxAcc"] == pytest.approx(0.499)
  # A's box (20,20,30,30) has IoU 100/121 = 0.83 with its GT: correct up to IoU 70.
  assert out["MaxBoxAcc@70"] == 100.0 and out["MaxBoxAccV2"] == 100.0
  # With both GT boxes the largest contour always matches one of them.
  out = evaluate([m], [record([a, b])])
  assert np.all(np.array(out["curve_BoxAcc@50"]) == 100)


def test_holes_are_contours_for_v2_only():
  # A 60 x 60 ring with a 20 x 20 hole. RETR_TREE also returns the hole's border,
  # traced on the ring pixels around it: rect x 39..60 -> box (39, 39, 61, 61).
  m = block(40, 60, 40, 60, 0.0, base=block(20, 80, 20, 80))
  hole = [40, 40, 59, 59]
  out = evaluate([m], [record(hole)])
  # Largest contour: the outer box (20, 20, 80, 80): IoU 400 / 3721 = 0.11.
  assert out["MaxBoxAcc"] == 0.0 and out["MaxBoxAcc@30"] == 0.0
  # All contours: the hole's box, IoU 400 / 529 = 0.756.
  assert out["MaxBoxAccV2"] == 100.0
  assert box_iou([[39, 39, 61, 61]], [hole])[0, 0] == pytest.approx(400 / 529)


def test_largest_contour_ties_go_to_opencvs_first():
  m = block(50, 60, 50, 60, base=block(10, 20, 10, 20))  # two equal 10 x 10 squares
  contours = cv2.findContours((m > 0).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
  x, y, w, h = cv2.boundingRect(contours[0])
  first = [x, y, x + w - 1, y + h - 1]
  other = [10, 10, 19, 19] if x == 50 else [50, 50, 59, 59]
  out = evaluate([m, m], [record(first, 0), record(other, 1)])
  assert out["MaxBoxAcc"] == 50.0
  assert out["MaxBoxAccV2"] == 100.0


def test_constant_map_is_one_whole_image_box():
  # Every pixel is foreground at every tau: box (0, 0, min(224, 223), 223).
  for value in (0.5, 1.0):
    out = evaluate([np.full((S, S), value)], [record([0, 0, 223, 223])], iou_thresholds=(100,))
    assert out["MaxBoxAccV2@100"] == 100.0


def test_small_map_size_clips_boxes_at_size_minus_one():
  size = 64
  m = block(40, 64, 40, 64, size=size)  # rect x 40, w 24: x + w = 64 -> clipped to 63
  rec = record([80, 80, 127, 127], width=128, height=128)  # -> (40, 40, 63, 63) at 64
  out = evaluate([m], [rec], size=size, iou_thresholds=(100,))
  assert out["MaxBoxAccV2@100"] == 100.0


def test_top_k_localization_and_classification():
  good, bad = block(50, 70, 60, 80), np.zeros((S, S))
  gt = [60, 50, 79, 69]
  recs = [record(gt, i, label=i) for i in range(4)]
  # label rank: image 0 first, image 1 third, image 2 sixth, image 3 first.
  logits = np.zeros((4, 8))
  logits[0, 0] = 5
  logits[1, [5, 6, 1]] = [9, 8, 7]
  logits[2, [3, 4, 5, 6, 7, 2]] = [9, 8, 7, 6, 5, 4]
  logits[3, 3] = 1
  out = evaluate([good, good, good, bad], recs, logits)
  assert out["top1_cls"] == 50.0 and out["top5_cls"] == 75.0
  assert out["MaxBoxAcc"] == 75.0
  assert out["top1_loc"] == 25.0   # image 0 (image 3 is top-1 but its box is wrong)
  assert out["top5_loc"] == 50.0   # images 0 and 1
  assert out["best_tau_top1_loc"] == 0.0
  json.dumps(out)  # serialisable as is


def test_streaming_and_merge_equal_one_pass():
  rng = np.random.default_rng(0)
  size = 32
  maps = [random_maps.score_map(rng, k, size) for k in random_maps.KINDS[:6] for _ in range(2)]
  recs = random_maps.records_for(rng, len(maps), maps)
  logits = rng.standard_normal((len(maps), 10))
  kw = dict(map_size=size, cam_curve_interval=0.01)
  whole = BoxEvaluator(recs, **kw)
  whole.update(np.stack(maps), np.arange(len(maps)), logits)
  batched = BoxEvaluator(recs, **kw)
  parts = [BoxEvaluator(recs, **kw), BoxEvaluator(recs, **kw)]
  for lo, hi in ((0, 5), (5, 6), (6, 12)):
    batched.update(np.stack(maps[lo:hi]), np.arange(lo, hi), logits[lo:hi])
    parts[lo > 0].update(np.stack(maps[lo:hi]), np.arange(lo, hi), logits[lo:hi])
  states = [p.state() for p in parts]
  summed = BoxEvaluator(recs, **kw)  # e.g. counts summed across processes
  summed.merge_state({k: states[0][k] + states[1][k] for k in states[0]})
  parts[0].merge(parts[1])
  assert batched.compute() == whole.compute() == parts[0].compute() == summed.compute()
  batched.reset()
  assert batched.count == 0 and batched.correct.sum() == 0
  with pytest.raises(ValueError, match="cannot merge"):
    BoxEvaluator(recs, map_size=size, cam_curve_interval=0.02).merge(whole)


@pytest.mark.parametrize("size,kinds,per_kind", [
    (32, random_maps.KINDS[:-1], 2),   # every kind but noise, 2 maps each
    (20, ("noise",), 1),               # noise: many contours, kept small
])
def test_fast_counts_equal_per_threshold_definition(size, kinds, per_kind):
  rng = np.random.default_rng(size)
  maps = [random_maps.score_map(rng, k, size) for k in kinds for _ in range(per_kind)]
  recs = random_maps.records_for(rng, len(maps), maps)
  ev = BoxEvaluator(recs, map_size=size, cam_curve_interval=0.001)
  ev.update(np.stack(maps), np.arange(len(maps)))
  largest, every = straightforward.box_correct(maps, recs, 0.001, ev.deltas)
  np.testing.assert_array_equal(ev.correct, largest)
  np.testing.assert_array_equal(ev.correct_all, every)
  assert 0 < largest.sum() < len(maps) * largest.size  # both outcomes occur


def test_fast_counts_equal_definition_at_224_and_coarse_steps():
  rng = np.random.default_rng(7)
  maps = [random_maps.score_map(rng, k, S) for k in ("upsampled", "holes", "multimodal")]
  recs = random_maps.records_for(rng, len(maps), maps)
  for interval in (0.01, 0.3):
    ev = BoxEvaluator(recs, map_size=S, cam_curve_interval=interval, iou_thresholds=(10, 50, 90))
    ev.update(np.stack(maps), np.arange(len(maps)))
    largest, every = straightforward.box_correct(maps, recs, interval, ev.deltas)
    np.testing.assert_array_equal(ev.correct, largest)
    np.testing.assert_array_equal(ev.correct_all, every)


def test_bad_input_raises_naming_the_image():
  recs = [record([0, 0, 10, 10], 0), record([0, 0, 10, 10], 1)]
  ev = BoxEvaluator(recs, map_size=16)
  ok = np.zeros((1, 16, 16))
  with pytest.raises(ValueError, match="im1.jpg"):
    ev.update(np.full((1, 16, 16), 1.5), [1])
  with pytest.raises(ValueError, match="im0.jpg"):
    ev.update(np.full((1, 16, 16), np.nan), [0])
  with pytest.raises(ValueError, match=r"\(B, 16, 16\)"):
    ev.update(np.zeros((1, 8, 8)), [0])
  with pytest.raises(ValueError, match="not among"):
    ev.update(ok, [7])
  with pytest.raises(ValueError, match="no score map"):
    ev.compute()
  ev.update(ok, [0], np.zeros((1, 3)))
  ev.update(ok, [1])  # no logits this time
  with pytest.raises(ValueError, match="logits were given for 1 of 2"):
    ev.compute()
  with pytest.raises(ValueError, match="no ground-truth box"):
    BoxEvaluator([record(np.zeros((0, 4)))])
  with pytest.raises(ValueError, match="image size"):
    BoxEvaluator([record([0, 0, 1, 1], width=0)])
