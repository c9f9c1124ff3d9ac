r"""Scores saved score maps against a split's ground truth, like wsolevaluation's evaluation.py.

  python -m fcam_jax.evaluate_scoremaps --metadata_root=metadata/CUB \
      --scoremap_root=scoremaps/ --dataset=CUB [--split=test] [--cam_curve_interval=0.001] \
      [--map_size=224] [--box_v2_metric] [--mask_root=DIR] [--output=metrics.json]

The map of image `a/b.jpg` is `<scoremap_root>/a/b.npy` (`a/b.jpg.npy` is accepted too):
a 2-D float array in [0, 1] of any size, bilinearly resized (half-pixel centres, as
cv2.resize INTER_LINEAR) to `--map_size` (224, the benchmark's; a fcam_jax run scores
its maps at config.data.eval_size, which `config.eval.save_scoremaps` records in the
stage's results.json). Image files are not needed; sizes come from image_sizes.txt.

Prints a short table: the number of images, MaxBoxAcc and MaxBoxAccV2 (and its per-IoU
values) with their best thresholds, or PxAP on OpenImages, and the headline number
(`localization`: PxAP on OpenImages, MaxBoxAccV2 with --box_v2_metric, else MaxBoxAcc).
`--output=FILE` writes every metric with the curves as JSON (fcam_jax.metrics keys).

Bad input ends in one `error:` line on stderr: exit 2 for flags (a --scoremap_root or
--metadata_root that is not a folder), 1 for the data (a missing or invalid map, naming
the image id; metadata errors, naming file:line). `--verbose` adds the traceback.
"""

import math
import os
from typing import Dict, Sequence

from absl import flags
import cv2
import numpy as np

from fcam_jax import cli
from fcam_jax import files
from fcam_jax import metrics
from fcam_jax.data import images
from fcam_jax.data import metadata

MAP_SIZE = 224


class EvaluationError(ValueError):
  """Score maps that cannot be scored (e.g. no ground-truth foreground in the split)."""


class ScoremapError(EvaluationError):
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
  try:
    results = evaluator.compute()
  except ValueError as e:  # nothing to score against
    raise EvaluationError(f"{metadata_root} ({split}): {e}") from e
  if dataset == "OpenImages":
    headline = "PxAP"
  else:
    headline = "MaxBoxAccV2" if box_v2_metric else "MaxBoxAcc"
  return {"localization": results[headline], "localization_metric": headline, **results}


def table(results: Dict[str, object], interval: float) -> str:
  """The headline metrics as a small Markdown table (values %, best thresholds tau)."""
  decimals = max(3, math.ceil(-math.log10(interval) - 1e-9))
  rows = []

  def row(name, value, tau_key=None):
    tau = results.get(tau_key) if tau_key else None
    rows.append((name, f"{value:.2f}", "" if tau is None else f"{tau:.{decimals}f}"))

  if "PxAP" in results:
    row("PxAP", results["PxAP"])
  if "MaxBoxAcc" in results:
    row("MaxBoxAcc", results["MaxBoxAcc"], "best_tau_MaxBoxAcc")
    row("MaxBoxAccV2", results["MaxBoxAccV2"])
    for key in sorted((k for k in results if k.startswith("MaxBoxAccV2@")),
                      key=lambda k: int(k.split("@")[1])):
      row(key, results[key], f"best_tau_{key}")
  header = ("metric", "value", "best tau")
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]

  def line(cells):
    padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
    return "| " + " | ".join(padded) + " |"

  rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
  return "\n".join([line(header), rule] + [line(r) for r in rows])


_METADATA_ROOT = flags.DEFINE_string(
    "metadata_root", None, "Metadata of the dataset: <metadata_root>/<split>/image_ids.txt ...")
_SCOREMAP_ROOT = flags.DEFINE_string("scoremap_root", None, "Folder of <image id>.npy maps.")
_MASK_ROOT = flags.DEFINE_string("mask_root", "", "Root of the OpenImages mask paths.")
_DATASET = flags.DEFINE_enum("dataset", None, list(metadata.DATASETS), "Dataset.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_INTERVAL = flags.DEFINE_float("cam_curve_interval", 0.001, "Score-map threshold step.")
_BOX_V2 = flags.DEFINE_bool("box_v2_metric", False, "Headline MaxBoxAccV2 instead of MaxBoxAcc.")
_IOU = flags.DEFINE_list("iou_thresholds", ["30", "50", "70"], "IoU thresholds (%) of MaxBoxAccV2.")
_MAP_SIZE = flags.DEFINE_integer(
    "map_size", MAP_SIZE, "Side the maps are resized to and the boxes scaled to (224: the "
    "benchmark's; a fcam_jax run's config.data.eval_size to reproduce its numbers).")
_OUTPUT = flags.DEFINE_string("output", "", "Also write every metric and curve to this JSON file.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "Image folder (not read; recorded only).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for flag in (_SCOREMAP_ROOT, _METADATA_ROOT):
    if not os.path.isdir(flag.value):
      cli.fail(f"--{flag.name}={flag.value}: no such folder")
  if not 0.0 < _INTERVAL.value < 1.0:
    cli.fail(f"--cam_curve_interval={_INTERVAL.value}: must be in (0, 1)")
  if _MAP_SIZE.value <= 0:
    cli.fail(f"--map_size={_MAP_SIZE.value}: must be > 0")
  try:
    ious = [int(t) for t in _IOU.value]
  except ValueError:
    ious = []
  if not ious or not all(0 < t <= 100 for t in ious):
    cli.fail(f"--iou_thresholds={','.join(_IOU.value)}: expected integer percents in (0, 100]")
  results = evaluate(_DATASET.value, _METADATA_ROOT.value, _SCOREMAP_ROOT.value, _SPLIT.value,
                     _MASK_ROOT.value, _DATA_ROOT.value, _INTERVAL.value, ious, _BOX_V2.value,
                     _MAP_SIZE.value)
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    files.write_json(_OUTPUT.value, {
        "dataset": _DATASET.value, "split": _SPLIT.value, "metadata_root": _METADATA_ROOT.value,
        "scoremap_root": _SCOREMAP_ROOT.value, "map_size": _MAP_SIZE.value,
        "cam_curve_interval": _INTERVAL.value, **results})
  print(f"{_SCOREMAP_ROOT.value}: {_DATASET.value} {_SPLIT.value}, {results['num_images']} "
        f"images, maps at {_MAP_SIZE.value}x{_MAP_SIZE.value}, threshold step {_INTERVAL.value:g}")
  print(table(results, _INTERVAL.value))
  print(f"localization ({results['localization_metric']}): {results['localization']:.2f}"
        + (f"; full metrics in {_OUTPUT.value}" if _OUTPUT.value else ""))


if __name__ == "__main__":
  flags.mark_flags_as_required(["metadata_root", "scoremap_root", "dataset"])
  cli.run(main, data_errors=(EvaluationError, metadata.MetadataError, images.ImageError,
                             OSError))
