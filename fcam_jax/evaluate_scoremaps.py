r"""Scores saved score maps against a split's ground truth, like wsolevaluation's evaluation.py.

  python -m fcam_jax.evaluate_scoremaps --metadata_root=metadata/CUB \
      --scoremap_root=scoremaps/ --dataset=CUB [--split=test] [--cam_curve_interval=0.001] \
      [--box_v2_metric] [--mask_root=DIR] [--data_root=DIR]

The map of image `a/b.jpg` is `<scoremap_root>/a/b.npy` (`a/b.jpg.npy` is accepted too):
a 2-D float array in [0, 1] of any size, bilinearly resized (half-pixel centres, as
cv2.resize INTER_LINEAR) to 224 x 224. Prints one JSON object with every metric
(fcam_jax.metrics keys) plus `localization`, the headline number: PxAP on OpenImages,
MaxBoxAccV2 with --box_v2_metric, else MaxBoxAcc. Image files are not needed; sizes come
from image_sizes.txt.
"""

import json
import os
from typing import Dict, Sequence

from absl import app
from absl import flags
import cv2
import numpy as np

from fcam_jax import metrics
from fcam_jax.data import metadata

MAP_SIZE = 224


class ScoremapError(ValueError):
  """A missing or invalid score map; the message names the image id."""


def resize_bilinear(scoremap: np.ndarray, size: int) -> np.ndarray:
  """float64 (size, size), bilinear with half-pixel centres; values stay in [0, 1]."""
  if scoremap.shape == (size, size):
    return scoremap
  resized = cv2.resize(scoremap, (size, size), interpolation=cv2.INTER_LINEAR)
  return np.clip(resized, 0.0, 1.0)  # rounding can step a hair outside


def load_scoremap(scoremap_root: str, image_id: str, size: int = MAP_SIZE) -> np.ndarray:
  """The checked score map of `image_id` at size x size, float64."""
  stem = os.path.join(scoremap_root, os.path.splitext(image_id)[0] + ".npy")
  candidates = (stem, os.path.join(scoremap_root, image_id + ".npy"))
  path = next((p for p in candidates if os.path.isfile(p)), None)
  if path is None:
    raise ScoremapError(f"{image_id}: no score map ({candidates[0]} not found)")
  try:
    scoremap = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ScoremapError(f"{image_id}: unreadable score map {path} ({e})") from e
  if scoremap.ndim != 2 or min(scoremap.shape) == 0:
    raise ScoremapError(f"{image_id}: score map {path} must be a non-empty 2-D array; "
                        f"its shape is {scoremap.shape}")
  if not (np.issubdtype(scoremap.dtype, np.floating) or np.issubdtype(scoremap.dtype, np.integer)
          or scoremap.dtype == bool):
    raise ScoremapError(f"{image_id}: score map {path} has dtype {scoremap.dtype}; expected float")
  scoremap = scoremap.astype(np.float64)
  if np.isnan(scoremap).any():
    raise ScoremapError(f"{image_id}: score map {path} contains NaN")
  if scoremap.min() < 0 or scoremap.max() > 1:
    raise ScoremapError(f"{image_id}: score map {path} has values in [{scoremap.min():g}, "
                        f"{scoremap.max():g}]; they must be in [0, 1]")
  return resize_bilinear(scoremap, size)


def evaluate(dataset: str, metadata_root: str, scoremap_root: str, split: str = "test",
             mask_root: str = "", data_root: str = "", cam_curve_interval: float = 0.001,
             iou_thresholds: Sequence[int] = (30, 50, 70), box_v2_metric: bool = False,
             map_size: int = MAP_SIZE, batch_size: int = 64) -> Dict[str, object]:
  """Every metric of the split's score maps (see the module docstring)."""
  records = metadata.read_split(dataset, metadata_root, split, data_root, mask_root,
                                check_files=False)
  if dataset == "OpenImages":
    loader = metadata.openimages_mask_loader(records, map_size, cache=False)
    evaluator = metrics.MaskEvaluator(loader, map_size, cam_curve_interval, records=records)
  else:
    evaluator = metrics.BoxEvaluator(records, map_size, cam_curve_interval, iou_thresholds)
  for start in range(0, len(records), batch_size):
    batch = records[start:start + batch_size]
    maps = np.stack([load_scoremap(scoremap_root, r.image_id, map_size) for r in batch])
    evaluator.update(maps, np.array([r.index for r in batch]))
  results = evaluator.compute()
  if dataset == "OpenImages":
    headline = "PxAP"
  else:
    headline = "MaxBoxAccV2" if box_v2_metric else "MaxBoxAcc"
  return {"localization": results[headline], "localization_metric": headline, **results}


_METADATA_ROOT = flags.DEFINE_string(
    "metadata_root", None, "Metadata of the dataset: <metadata_root>/<split>/image_ids.txt ...")
_SCOREMAP_ROOT = flags.DEFINE_string("scoremap_root", None, "Folder of <image id>.npy maps.")
_MASK_ROOT = flags.DEFINE_string("mask_root", "", "Root of the OpenImages mask paths.")
_DATASET = flags.DEFINE_enum("dataset", None, list(metadata.DATASETS), "Dataset.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_INTERVAL = flags.DEFINE_float("cam_curve_interval", 0.001, "Score-map threshold step.")
_BOX_V2 = flags.DEFINE_bool("box_v2_metric", False, "Headline MaxBoxAccV2 instead of MaxBoxAcc.")
_IOU = flags.DEFINE_list("iou_thresholds", ["30", "50", "70"], "IoU thresholds (%) of MaxBoxAccV2.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "Image folder (not read; recorded only).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  results = evaluate(_DATASET.value, _METADATA_ROOT.value, _SCOREMAP_ROOT.value, _SPLIT.value,
                     _MASK_ROOT.value, _DATA_ROOT.value, _INTERVAL.value,
                     [int(t) for t in _IOU.value], _BOX_V2.value)
  print(json.dumps(results))


if __name__ == "__main__":
  flags.mark_flags_as_required(["metadata_root", "scoremap_root", "dataset"])
  app.run(main)
