r"""Time of the WSOL evaluators per image, fast vs the plain per-threshold definition.

  python benchmarks/bench_metrics.py [--num_maps=200] [--size=224] [--interval=0.001]

Both implementations run on the same random CAM-like maps (tests/metrics/random_maps.py:
upsampled low-resolution maps, smooth blobs, rings, plateaus, in turn) fed in batches of
32, and must give identical counts (asserted). Boxes: both the
largest-contour (MaxBoxAcc) and all-contour (MaxBoxAccV2) counts; masks: the PxAP
histograms.
"""

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcam_jax.metrics import BoxEvaluator, MaskEvaluator  # noqa: E402
from tests.metrics import random_maps, straightforward  # noqa: E402

_NUM_MAPS = flags.DEFINE_integer("num_maps", 200, "Score maps to evaluate.")
_SIZE = flags.DEFINE_integer("size", 224, "Map side.")
_INTERVAL = flags.DEFINE_float("interval", 0.001, "Threshold step.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random maps.")


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main(argv):
  del argv
  n, size, interval = _NUM_MAPS.value, _SIZE.value, _INTERVAL.value
  rng = np.random.default_rng(_SEED.value)
  kinds = ("upsampled", "blobs", "holes", "multimodal")
  maps = [random_maps.score_map(rng, kinds[i % len(kinds)], size) for i in range(n)]
  records = random_maps.records_for(rng, n, maps)
  masks = random_maps.masks_for(rng, maps)
  stacked, indices = np.stack(maps), np.arange(n)

  def feed(evaluator):
    for lo in range(0, n, 32):
      evaluator.update(stacked[lo:lo + 32], indices[lo:lo + 32])

  boxes = BoxEvaluator(records, map_size=size, cam_curve_interval=interval)
  _, t_box = _timed(lambda: feed(boxes))
  (largest, every), t_box_ref = _timed(
      lambda: straightforward.box_correct(maps, records, interval, boxes.deltas))
  np.testing.assert_array_equal(boxes.correct, largest)
  np.testing.assert_array_equal(boxes.correct_all, every)

  pixels = MaskEvaluator(lambda i: masks[i], map_size=size, cam_curve_interval=interval)
  _, t_mask = _timed(lambda: feed(pixels))
  (fg, bg), t_mask_ref = _timed(lambda: straightforward.score_histograms(maps, masks, interval))
  np.testing.assert_array_equal(pixels.fg_hist, fg)
  np.testing.assert_array_equal(pixels.bg_hist, bg)
  assert pixels.compute()["PxAP"] == straightforward.pxap(fg, bg)

  box_out = boxes.compute()
  print(f"{n} maps of {size}x{size}, threshold step {interval} "
        f"({len(boxes.thresholds)} thresholds); counts identical: yes")
  print(f"MaxBoxAcc {box_out['MaxBoxAcc']:.2f}  MaxBoxAccV2 {box_out['MaxBoxAccV2']:.2f}  "
        f"PxAP {pixels.compute()['PxAP']:.2f}")
  print()
  print("| metric | straightforward ms/image | fast ms/image | speed-up |")
  print("|---|---|---|---|")
  for name, ref, fast in (("boxes (MaxBoxAcc + MaxBoxAccV2)", t_box_ref, t_box),
                          ("masks (PxAP histograms)", t_mask_ref, t_mask)):
    print(f"| {name} | {1e3 * ref / n:.2f} | {1e3 * fast / n:.2f} | {ref / fast:.1f}x |")


if __name__ == "__main__":
  app.run(main)
