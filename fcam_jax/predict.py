r"""Applies a trained F-CAM workdir to image files: maps, boxes and an overlay per image.

  python -m fcam_jax.predict --workdir=DIR --input=PATH [--input=PATH ...] --output=OUT \
      [--checkpoint=best|last] [--method=gradcam] [--with_cam] [--targets=FILE] \
      [--threshold=0.3] [--batch_size=N]

Each `--input` is an image file or a folder (walked recursively, in sorted order).
Images are resized to `config.data.eval_size` (aspect not kept) as in evaluation and
run through the frozen classifier and the decoder of `<workdir>/stage2` in batches of a
fixed shape (the last one padded), by `fcam_jax.api`. For the image at relative path
`a/x.jpg` (relative to the inputs' common folder) OUT holds:

| file | content |
|---|---|
| `a/x.jpg.npy` | the F-CAM, float32 in [0, 1] at the original image size (bilinear) |
| `a/x.jpg.cam.npy` | the baseline CAM (`--with_cam`; stage-1-only workdir) of the predicted class, or of the `--targets` class |
| `a/x.jpg.overlay.png` | the image blended with a JET colour map of the map, and its box |

(a JPEG above `images.MAX_PIXELS` is decoded reduced: its maps keep the file's size,
its overlay has the decoded size)

and `OUT/predictions.json` lists per image its original size, the predicted (top-1)
class and probability, the threshold and the box of the largest contour (x0, y0, x1, y1
in original pixels, as the WSOL evaluator draws it), plus every file that could not be
read, with the reason. A workdir without stage-2 checkpoints gives the baseline CAM
only. Exit code 0 if at least one image was processed.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import cv2
import numpy as np

from fcam_jax import api
from fcam_jax import cams
from fcam_jax import cli
from fcam_jax import files
from fcam_jax import inference
from fcam_jax import metrics
from fcam_jax.data import images as images_lib

CHECKPOINTS = inference.CHECKPOINTS
PredictError = inference.WorkdirError


@dataclasses.dataclass
class Predictor:
  """A loaded workdir and what to compute: `predict_batch` on eval-size uint8 images,
  `run` on files."""
  localizer: api.Localizer
  method: str                    # CAM method of the baseline CAM
  with_cam: bool                 # also the baseline CAM (always, without stage 2)

  @property
  def checkpoint(self) -> Dict[str, Any]:
    return self.localizer.checkpoint

  @property
  def threshold(self) -> float:
    return self.localizer.threshold

  @property
  def threshold_source(self) -> str:
    return self.localizer.trained.threshold_source

  @property
  def batch_size(self) -> int:
    return self.localizer.batch_size

  @property
  def eval_size(self) -> int:
    return self.localizer.eval_size

  @property
  def map_name(self) -> str:
    """The map the boxes and overlays are made from."""
    return "fcam" if self.localizer.has_fcam else "cam"

  def preprocess(self, rgb: np.ndarray) -> np.ndarray:
    return self.localizer.resize(rgb)

  def predict_batch(self, images: np.ndarray, targets: Optional[Sequence[int]] = None
                    ) -> Dict[str, np.ndarray]:
    """class, probability, logits, fcam (with stage 2) and cam (`with_cam`) of uint8
    (n, S, S, 3) images."""
    return self.localizer.predict_resized(images, targets,
                                          self.method if self.with_cam else None)

  def run(self, inputs: Sequence[str], output: str, **kwargs) -> Dict[str, Any]:
    """`run(self, inputs, output, **kwargs)`."""
    return run(self, inputs, output, **kwargs)


def load_predictor(workdir: str, checkpoint: str = "best", method: Optional[str] = None,
                   with_cam: bool = False, batch_size: Optional[int] = None) -> Predictor:
  """The classifier (+ decoder) of a `python -m fcam_jax.main` workdir
  (`inference.load_trained`); `method` overrides `config.cam.method` for the CAM."""
  if method is not None and method not in cams.METHODS:
    raise PredictError(f"method={method!r}: must be one of {', '.join(cams.METHODS)}")
  localizer = api.load(workdir, checkpoint, batch_size)
  config = localizer.config
  info = localizer.checkpoint
  if not localizer.has_fcam:
    with_cam = True
    if method and method != config.cam.method:
      logging.warning("the val threshold %.3f was selected for %s, not %s",
                      localizer.threshold, config.cam.method, method)
  elif method and not with_cam:
    logging.warning("method=%s only changes the baseline CAM: add --with_cam", method)
  logging.info("predict: %s %s step %d, box threshold %.3f (%s)", info["stage"], checkpoint,
               info["step"], localizer.threshold, localizer.trained.threshold_source)
  return Predictor(localizer=localizer, method=method or config.cam.method, with_cam=with_cam)


# ----------------------------------------------------------------------------- host side

def find_images(inputs: Sequence[str], exclude: Optional[str] = None
                ) -> Tuple[List[Tuple[str, str]], List[Dict[str, str]]]:
  """(path, relative path) of every file under `inputs`, and the inputs that do not exist.

  Folders are walked recursively in sorted order (skipping `exclude`); relative paths are
  taken from the inputs' common folder, so distinct files never share one.
  """
  errors, existing = [], []
  for p in inputs:
    if os.path.exists(p):
      existing.append(p)
    else:
      errors.append({"input": p, "reason": "no such file or directory"})
  if not existing:
    return [], errors
  root = os.path.commonpath([os.path.abspath(p) for p in existing])
  if not os.path.isdir(root):
    root = os.path.dirname(root)
  exclude = os.path.abspath(exclude) if exclude else None
  files, seen = [], set()

  def add(path):
    key = os.path.abspath(path)
    if key not in seen:
      seen.add(key)
      files.append((path, os.path.relpath(key, root)))

  for p in existing:
    if not os.path.isdir(p):
      add(p)
      continue
    for dirpath, dirnames, filenames in os.walk(p):
      dirnames[:] = sorted(d for d in dirnames
                           if os.path.abspath(os.path.join(dirpath, d)) != exclude)
      for name in sorted(filenames):
        add(os.path.join(dirpath, name))
  return files, errors


def read_rgb(path: str) -> np.ndarray:
  """uint8 RGB via fcam_jax.data.images (PIL); OpenCV for what PIL cannot identify."""
  try:
    return images_lib.load_rgb(path)
  except images_lib.ImageError as e:
    if "unreadable image" not in str(e):
      raise
    data = np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
      raise
    return np.ascontiguousarray(bgr[..., ::-1])


def _save_png(path: str, rgb: np.ndarray):
  ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
  if not ok:
    raise OSError(f"{path}: PNG encoding failed")
  files.write_atomic(path, data.tobytes())


@dataclasses.dataclass
class _Item:
  path: str
  rel: str
  target: Optional[int] = None   # the class of the CAM (--targets); None: the predicted one
  image: np.ndarray = None       # resized, eval size
  size: Tuple[int, int] = None   # original (height, width)
  decoded: Tuple[int, int] = None  # decoded (height, width): smaller for a huge JPEG


def _load(predictor: Predictor, item: _Item) -> _Item:
  rgb = read_rgb(item.path)
  item.decoded = rgb.shape[:2]
  try:  # images.load_rgb decodes a JPEG above images.MAX_PIXELS at a reduced scale
    width, height = images_lib.image_size(item.path)
  except images_lib.ImageError:  # decoded by OpenCV
    height, width = item.decoded
  item.size = (height, width)
  item.image = predictor.preprocess(rgb)
  return item


def _write(predictor: Predictor, item: _Item, pred: Dict[str, np.ndarray], output: str,
           threshold: float, overlay: bool) -> Dict[str, Any]:
  """Writes one image's maps and overlay; returns its predictions.json entry."""
  height, width = item.size
  base = os.path.join(output, item.rel)
  os.makedirs(os.path.dirname(base), exist_ok=True)
  outputs, q = {}, None
  for name, suffix in (("cam", ".cam.npy"), ("fcam", ".npy")):  # the box map last
    if name in pred:
      full = api.resize_map(pred[name], height, width)
      files.save_npy(base + suffix, full)
      outputs[name] = item.rel + suffix
      if name == predictor.map_name:
        q = api.quantize(full)
      del full
  box = metrics.largest_contour_box(q, threshold)
  box = None if box is None else [int(v) for v in box]
  record = {"input": item.path, "outputs": outputs, "size": [int(width), int(height)],
            "class": int(pred["class"]), "probability": float(pred["probability"]),
            "threshold": float(threshold), "map": predictor.map_name,
            "boxes": [box] if box is not None else []}
  if "cam" in pred:
    record["cam_class"] = int(pred["class"] if item.target is None else item.target)
  if overlay:
    rgb = read_rgb(item.path)  # decoded again: batches never hold full-size images
    if rgb.shape[:2] != item.decoded:
      raise images_lib.ImageError(f"{item.path}: changed while being processed")
    obox = box
    if item.decoded != item.size:  # a reduced JPEG: the overlay at the decoded size
      dh, dw = item.decoded
      q = cv2.resize(q, (dw, dh), interpolation=cv2.INTER_AREA)
      obox = box and [int(c * dw / width) if i % 2 == 0 else int(c * dh / height)
                      for i, c in enumerate(box)]
      record["overlay_size"] = [int(dw), int(dh)]
    _save_png(base + ".overlay.png", api.overlay(rgb, q, obox))
    outputs["overlay"] = item.rel + ".overlay.png"
  return record


def _reason(path: str, e: Exception) -> str:
  message = str(e)
  if message.startswith(path + ": "):
    message = message[len(path) + 2:]
  return message if isinstance(e, images_lib.ImageError) else f"{type(e).__name__}: {message}"


def _ordered(pool, fn: Callable, items: Iterable, window: int) -> Iterator[Tuple[Any, Any]]:
  """(item, fn(item) or the exception it raised), in order, at most `window` in flight."""
  pending = collections.deque()
  for item in items:
    pending.append((item, pool.submit(fn, item)))
    if len(pending) >= window:
      yield _result(*pending.popleft())
  while pending:
    yield _result(*pending.popleft())


def _result(item, future):
  try:
    return item, future.result()
  except Exception as e:  # pylint: disable=broad-except
    return item, e


def read_targets(path: str, num_classes: int) -> Dict[str, int]:
  """`image path,class` lines (blank lines and `#` comments skipped) -> {path: class}."""
  targets = {}
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise PredictError(f"--targets={path}: unreadable ({e})") from e
  for n, line in enumerate(lines, 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    image, sep, label = line.rpartition(",")
    try:
      label = int(label)
    except ValueError:
      label = None
    if not sep or not image.strip() or label is None:
      raise PredictError(f"{path}:{n}: expected 'image path,class', got {line!r}")
    if not 0 <= label < num_classes:
      raise PredictError(f"{path}:{n}: class {label} is not in [0, {num_classes})")
    targets[image.strip()] = label
  return targets


def _match_targets(files: List[Tuple[str, str]], targets: Dict[str, int]
                   ) -> List[Optional[int]]:
  """Each file's class from `targets`, keyed by its path relative to the inputs' common
  folder, the path as given or its absolute path; None where it has none."""
  by_abs = {os.path.abspath(k): v for k, v in targets.items()}
  return [targets.get(rel, targets.get(path, by_abs.get(os.path.abspath(path))))
          for path, rel in files]


def run(predictor: Predictor, inputs: Sequence[str], output: str, *,
        threshold: Optional[float] = None, overlay: bool = True, num_threads: int = 4,
        targets: Optional[Dict[str, int]] = None, targets_source: str = "targets"
        ) -> Dict[str, Any]:
  """Predicts every image under `inputs` into `output`; returns predictions.json's content.

  `targets` ({image path: class}) picks the class of each baseline CAM (default: the
  predicted class). Unreadable files are listed under `errors` with the reason and skipped.
  """
  if threshold is not None and not 0.0 <= threshold <= 1.0:
    raise PredictError(f"threshold={threshold}: must be in [0, 1]")
  tau = predictor.threshold if threshold is None else float(threshold)
  t0 = time.time()
  os.makedirs(output, exist_ok=True)
  found, errors = find_images(inputs, exclude=output)
  labels = [None] * len(found)
  if targets is not None:
    labels = _match_targets(found, targets)
    errors += [{"input": path, "reason": f"no class for it in {targets_source}"}
               for (path, _), label in zip(found, labels) if label is None]
    found, labels = ([f for f, l in zip(found, labels) if l is not None],
                     [l for l in labels if l is not None])
  for e in errors:
    logging.warning("%s: %s", e["input"], e["reason"])
  total, done, last_log = len(found), 0, t0
  records: List[Dict[str, Any]] = []

  def fail(item: _Item, e: Exception):
    logging.warning("skipped %s: %s", item.path, _reason(item.path, e))
    errors.append({"input": item.path, "reason": _reason(item.path, e)})

  def collect(item, future):
    item, result = _result(item, future)
    if isinstance(result, Exception):
      fail(item, result)
    else:
      records.append(result)

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    writes = collections.deque()

    def predict(batch: List[_Item]):
      preds = predictor.predict_batch(
          np.stack([item.image for item in batch]),
          None if targets is None else [item.target for item in batch])
      for i, item in enumerate(batch):
        item.image = None
        pred = {k: v[i] for k, v in preds.items()}
        writes.append((item, pool.submit(_write, predictor, item, pred, output, tau, overlay)))
      while len(writes) > 2 * max(1, num_threads):
        collect(*writes.popleft())

    batch = []
    loads = _ordered(pool, functools.partial(_load, predictor),
                     (_Item(path, rel, label) for (path, rel), label in zip(found, labels)),
                     window=2 * predictor.batch_size)
    for item, loaded in loads:
      done += 1
      if isinstance(loaded, Exception):
        fail(item, loaded)
      else:
        batch.append(loaded)
      if len(batch) == predictor.batch_size or (done == total and batch):
        predict(batch)
        batch = []
      now = time.time()
      if now - last_log > 10 or done == total:
        logging.info("predict: %d/%d files, %.1f images/s", done, total,
                     (done - len(errors)) / max(now - t0, 1e-9))
        last_log = now
    while writes:
      collect(*writes.popleft())

  wall = time.time() - t0
  summary = {
      "checkpoint": predictor.checkpoint, "map": predictor.map_name,
      "cam_method": predictor.method if predictor.with_cam else None,
      "cam_class": None if not predictor.with_cam else (
          "predicted" if targets is None else targets_source),
      "eval_size": predictor.eval_size,
      "threshold": tau, "threshold_source": predictor.threshold_source if threshold is None
      else "--threshold", "num_files": total, "num_images": len(records),
      "num_errors": len(errors), "wall_time_s": wall,
      "images_per_s": len(records) / max(wall, 1e-9), "images": records, "errors": errors}
  path = os.path.join(output, "predictions.json")
  files.write_json(path, summary)
  logging.info("predict: %d images, %d errors, %.1f images/s -> %s", len(records), len(errors),
               summary["images_per_s"], path)
  return summary


# ----------------------------------------------------------------------------- CLI

def define_flags():
  flags.DEFINE_string("workdir", None, "A python -m fcam_jax.main workdir.")
  flags.DEFINE_multi_string("input", None, "Image file or folder (repeatable).")
  flags.DEFINE_string("output", None, "Folder for the maps, overlays and predictions.json.")
  flags.DEFINE_enum("checkpoint", "best", list(CHECKPOINTS),
                    "Stage-2 (or stage-1) step: best by validation, or last.")
  flags.DEFINE_enum("method", None, list(cams.METHODS),
                    "CAM method of the baseline CAM (default: the config's).")
  flags.DEFINE_bool("with_cam", False, "Also write the baseline CAM (.cam.npy).")
  flags.DEFINE_string("targets", None, "A text file of 'image path,class' lines: the class of "
                      "each image's baseline CAM (e.g. the true class, as evaluation does); "
                      "default: the predicted class.")
  flags.DEFINE_float("threshold", None,
                     "Box threshold in [0, 1] (default: the checkpoint's val best tau).")
  flags.DEFINE_integer("batch_size", None, "Batch size (default config.eval.batch_size).")
  flags.DEFINE_bool("overlay", True, "Write the heat-map overlay PNGs.")
  flags.DEFINE_integer("num_threads", 4, "Host threads decoding and writing images.")
  flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if f.threshold is not None and not 0.0 <= f.threshold <= 1.0:
    cli.fail(f"--threshold={f.threshold}: must be in [0, 1]")
  if f.batch_size is not None and f.batch_size <= 0:
    cli.fail(f"--batch_size={f.batch_size}: must be > 0")
  if not os.path.isdir(f.workdir):
    cli.fail(f"--workdir={f.workdir}: no such folder")
  if f.targets and not os.path.isfile(f.targets):
    cli.fail(f"--targets={f.targets}: no such file")
  predictor = load_predictor(f.workdir, f.checkpoint, f.method, f.with_cam or bool(f.targets),
                             f.batch_size)
  targets = (read_targets(f.targets, predictor.localizer.config.model.num_classes)
             if f.targets else None)
  summary = predictor.run(f.input, f.output, threshold=f.threshold, overlay=f.overlay,
                          num_threads=f.num_threads, targets=targets,
                          targets_source=f.targets or "targets")
  if not summary["num_images"]:
    cli.fail(f"no image could be processed from {', '.join(f.input)} ({summary['num_errors']} "
             f"errors, listed in {os.path.join(f.output, 'predictions.json')})", cli.DATA)


if __name__ == "__main__":
  define_flags()
  # A workdir without the checkpoints or config it needs, a malformed --targets file.
  cli.run(main, data_errors=(PredictError, OSError))
