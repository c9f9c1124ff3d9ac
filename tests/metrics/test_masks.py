"""MaskEvaluator (PxAP): hand-computed cases, and equality with np.histogram + the plain
precision-recall definition (tests/metrics/straightforward.py) on random maps."""

import json

import numpy as np
import pytest

from fcam_jax.data.records import ImageRecord
from fcam_jax.metrics import MaskEvaluator, score_bins

from . import random_maps
from . import straightforward


def evaluate(maps, masks, interval=0.1, records=None, logits=None):
  maps = np.asarray(maps, np.float64)
  ev = MaskEvaluator(lambda i: masks[i], maps.shape[1], interval, records=records)
  ev.update(maps, np.arange(len(maps)), logits)
  return ev.compute()


def test_hand_computed_pxap_with_ignore_pixels():
  scores = np.array([[0.95, 0.65, 0.75],
                     [0.25, 0.05, 0.05],
                     [0.05, 1.00, 0.15]])
  fg = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]], bool)
  ignore = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 1]], bool)  # (0, 0) is also fg: stays fg
  # Ranked: 0.95 fg, 0.75 bg, 0.65 fg, then bg; the ignored 1.0 and 0.15 do not count.
  # AP = 0.5 * 1 (recall 0.5 at precision 1) + 0.5 * 2/3 (recall 1 at precision 2/3).
  out = evaluate([scores], [(fg, ignore)])
  assert out["PxAP"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
  # Were the ignored pixels background, the 1.0 would rank first: AP 0.5 * 1/2 + 0.5 * 2/4.
  out = evaluate([scores], [(fg, np.zeros_like(fg))])
  assert out["PxAP"] == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 0.5))


def test_score_one_falls_in_the_one_to_two_bin_and_ties_share_a_point():
  scores = np.array([[1.0, 0.55], [0.55, 0.05]])
  fg = np.array([[1, 1], [0, 0]], bool)
  out = evaluate([scores], [(fg, np.zeros_like(fg))])
  assert out["PxAP"] == pytest.approx(100 * (0.5 * 1 + 0.5 * 2 / 3))
  # The first curve point is "score >= 1" (the [1, 2) bin), not the 0/0 point of ">= 2".
  assert out["curve_pr_threshold"][0] == 1.0
  assert (out["curve_precision"][0], out["curve_recall"][0]) == (1.0, 0.5)
  assert out["curve_recall"][-1] == 1.0 and out["curve_pr_threshold"][-1] == 0.0
  assert len(out["curve_precision"]) == len(out["curve_recall"]) == len(out["curve_pr_threshold"])


def test_perfect_map_scores_100():
  rng = np.random.default_rng(0)
  fg = rng.random((16, 16)) > 0.6
  assert evaluate([fg.astype(float)], [(fg, np.zeros_like(fg))], 0.001)["PxAP"] == 100.0


def test_bins_match_np_histogram_on_edges_and_neighbours():
  for interval in (0.001, 0.004, 0.3, 0.007):
    taus = np.arange(0, 1, interval)
    edges = np.append(taus, [1.0, 2.0, 3.0])
    s = np.concatenate([taus, np.nextafter(taus, 2), np.nextafter(taus[1:], -1), [0.0, 1.0],
                        np.nextafter(1.0, -1) * np.ones(1),
                        np.random.default_rng(0).random(2000)])
    expected = np.array([np.histogram([v], edges)[0].argmax() for v in s])
    np.testing.assert_array_equal(score_bins(s, taus, interval), expected)


@pytest.mark.parametrize("interval", [0.001, 0.004, 0.3, 0.007])
def test_histograms_and_pxap_equal_definition(interval):
  rng = np.random.default_rng(1)
  size = 48
  maps = [random_maps.score_map(rng, k, size) for k in random_maps.KINDS for _ in range(2)]
  maps[0][:4] = 1.0
  edges = np.arange(0, 1, interval)  # scores exactly on the bin edges
  flat = maps[1].reshape(-1)
  flat[:min(len(edges), flat.size)] = edges[:flat.size]
  masks = random_maps.masks_for(rng, maps)
  ev = MaskEvaluator(lambda i: masks[i], size, interval)
  ev.update(np.stack(maps), np.arange(len(maps)))
  fg_hist, bg_hist = straightforward.score_histograms(maps, masks, interval)
  np.testing.assert_array_equal(ev.fg_hist, fg_hist)
  np.testing.assert_array_equal(ev.bg_hist, bg_hist)
  assert ev.compute()["PxAP"] == straightforward.pxap(fg_hist, bg_hist)


def test_streaming_merge_and_classification():
  rng = np.random.default_rng(2)
  size = 16
  maps = np.stack([random_maps.score_map(rng, "blobs", size) for _ in range(6)])
  masks = random_maps.masks_for(rng, maps)
  recs = [ImageRecord(index=i, image_id=f"m{i}", path="", label=i % 3, width=0, height=0)
          for i in range(6)]
  logits = np.zeros((6, 3))
  logits[np.arange(6), [0, 1, 1, 0, 1, 2]] = 1  # labels 0,1,2,0,1,2: 5 of 6 right
  whole = MaskEvaluator(lambda i: masks[i], size, 0.01, records=recs)
  whole.update(maps, np.arange(6), logits)
  a = MaskEvaluator(lambda i: masks[i], size, 0.01, records=recs)
  b = MaskEvaluator(lambda i: masks[i], size, 0.01, records=recs)
  a.update(maps[:2], np.arange(2), logits[:2])
  b.update(maps[2:], np.arange(2, 6), logits[2:])
  a.merge(b)
  out = whole.compute()
  assert a.compute() == out
  assert out["top1_cls"] == pytest.approx(100 * 5 / 6) and out["top5_cls"] == 100.0
  json.dumps(out)
  with pytest.raises(ValueError, match="cannot merge"):
    MaskEvaluator(lambda i: masks[i], size, 0.02).merge(whole)


def test_errors():
  fg = np.zeros((4, 4), bool)
  ev = MaskEvaluator(lambda i: (fg, fg), 4, 0.1)
  with pytest.raises(ValueError, match="no score map"):
    ev.compute()
  ev.update(np.zeros((1, 4, 4)), [0])
  with pytest.raises(ValueError, match="no ground-truth foreground"):
    ev.compute()
  with pytest.raises(ValueError, match="needs `records`"):
    ev.update(np.zeros((1, 4, 4)), [0], np.zeros((1, 2)))
  bad = MaskEvaluator(lambda i: (np.zeros((3, 3), bool),) * 2, 4, 0.1)
  with pytest.raises(ValueError, match="masks of index 0"):
    bad.update(np.zeros((1, 4, 4)), [0])
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    ev.update(-np.ones((1, 4, 4)), [0])
