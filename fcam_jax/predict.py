r"""Applies a trained F-CAM workdir to image files: maps, boxes and an overlay per image.

  python -m fcam_jax.predict --workdir=DIR --input=PATH [--input=PATH ...] --output=OUT \
      [--checkpoint=best|last] [--method=gradcam] [--with_cam] [--threshold=0.3] [--batch_size=N]

Each `--input` is an image file or a folder (walked recursively, in sorted order).
Images are resized to `config.data.eval_size` (aspect not kept) as in evaluation and
run through the frozen classifier and the decoder of `<workdir>/stage2` in batches of a
fixed shape (the last one padded). For the image at relative path `a/x.jpg` (relative
to the inputs' common folder) OUT holds:

| file | content |
|---|---|
| `a/x.jpg.npy` | the F-CAM, float32 in [0, 1] at the original image size (bilinear) |
| `a/x.jpg.cam.npy` | the baseline CAM of the predicted class (`--with_cam`; stage-1-only workdir) |
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
import json
import logging as logging_lib
import os
import sys
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcam_jax import checkpoint as ckpt_lib
from fcam_jax import config_lib
from fcam_jax import models
from fcam_jax import parallel
from fcam_jax import steps
from fcam_jax.data import images as images_lib
from fcam_jax.data import pipeline
from fcam_jax.metrics import boxes as boxes_lib
from fcam_jax.models import decoder as decoder_lib
from fcam_jax.models import normalize

CHECKPOINTS = ("best", "last")
THRESHOLD_KEY = "best_tau_MaxBoxAcc"
DEFAULT_THRESHOLD = 0.5


class PredictError(ValueError):
  """A workdir, config or argument predict cannot use; the message names it."""


# ----------------------------------------------------------------------------- workdir

def _update(node: ml_collections.ConfigDict, values: Dict, path: str, prefix: str = "config"):
  for key, value in values.items():
    name = f"{prefix}.{key}"
    if key not in node:
      logging.warning("%s: ignoring unknown key %s", path, name)
    elif isinstance(node[key], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise PredictError(f"{path}: {name} must be a section, got {value!r}")
      _update(node[key], value, path, name)
    else:
      try:
        node[key] = tuple(value) if isinstance(node[key], tuple) else value
      except (TypeError, ValueError) as e:
        raise PredictError(f"{path}: bad value for {name}: {e}") from e


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """`<workdir>/config.json` (or results.json's `config`) over `config_lib.base_config()`."""
  if not os.path.isdir(workdir):
    raise PredictError(f"no workdir {workdir}")
  path = os.path.join(workdir, "config.json")
  key = None
  if not os.path.isfile(path):
    results = os.path.join(workdir, "results.json")
    if not os.path.isfile(results):
      raise PredictError(f"no config in workdir {workdir}: {path} not found "
                         "(is it a python -m fcam_jax.main workdir?)")
    path, key = results, "config"
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise PredictError(f"{path}: unreadable config ({e})") from e
  if key is not None:
    values = values.get(key)
  if not isinstance(values, dict):
    raise PredictError(f"{path}: no config object")
  config = config_lib.base_config()
  _update(config, values, path)
  return config


def _select_step(directory: str, which: str) -> Optional[Tuple[ckpt_lib.Checkpointer, int]]:
  """The checkpointer of `directory` and its best/latest step, or None if it has none."""
  if not directory or not os.path.isdir(directory):
    return None
  ckpt = ckpt_lib.Checkpointer(directory, read_only=True)
  step = ckpt.best_step() if which == "best" else ckpt.latest_step()
  if step is None:
    step = ckpt.latest_step()
  if step is None:
    ckpt.close()
    return None
  return ckpt, step


def _val_threshold(ckpt: ckpt_lib.Checkpointer, step: int, stage_dir: str
                   ) -> Tuple[Optional[float], str]:
  """The val `best_tau_MaxBoxAcc` of `step`: from the checkpoint's history, else results.json."""
  try:
    history = ckpt.restore_meta(step).get("history", [])
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("%s step %d: no readable meta (%s)", ckpt.directory, step, e)
    history = []
  results_path = os.path.join(stage_dir, "results.json")
  if os.path.isfile(results_path):
    try:
      with open(results_path) as f:
        history = history + [json.load(f).get("val_at_best") or {}]
    except (OSError, ValueError) as e:
      logging.warning("%s: unreadable (%s)", results_path, e)
  for h in history:
    if h.get("step") == step and h.get(THRESHOLD_KEY) is not None:
      return float(h[THRESHOLD_KEY]), f"val {THRESHOLD_KEY} of {ckpt.directory} step {step}"
  return None, ""


def _restore_variables(ckpt: ckpt_lib.Checkpointer, step: int) -> Dict:
  state = ckpt.restore_raw(step)
  return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


# ----------------------------------------------------------------------------- model

def predict_maps(variables: Dict, images: jnp.ndarray, rng, *, classifier, decoder, cam_config,
                 with_cam: bool) -> Dict[str, jnp.ndarray]:
  """Top-1 class, its probability, the logits, the F-CAM and/or the CAM of the top-1 class.

  `images` are uint8 (B, S, S, 3) at the eval size; the maps are (B, S, S). `decoder`
  None: CAM only.
  """
  clf_vars = variables["classifier"]
  x = normalize(images, classifier.backbone.dtype)
  logits, taps = classifier.apply(clf_vars, x, train=False)
  logits = logits.astype(jnp.float32)
  label = jnp.argmax(logits, axis=-1)  # ties: the lower class, as the evaluator
  probs = jax.nn.softmax(logits, axis=-1)
  out = {"class": label, "probability": jnp.take_along_axis(probs, label[:, None], 1)[:, 0],
         "logits": logits}
  if decoder is not None:
    dtaps = [taps[name] for name in type(classifier.backbone).DECODER_TAPS]
    dec = decoder.apply(variables["decoder"], dtaps, x.shape[1:3], train=False)
    out["fcam"] = jax.nn.softmax(dec.astype(jnp.float32), axis=-1)[..., 1]
  if with_cam or decoder is None:
    out["cam"] = steps.cam_maps(classifier, clf_vars, taps, x, label, rng, cam_config)
  return out


@dataclasses.dataclass
class Predictor:
  """A loaded workdir: `predict_batch` on eval-size uint8 images, `run` on files."""
  config: ml_collections.ConfigDict
  variables: Dict[str, Any]
  checkpoint: Dict[str, Any]     # provenance: stage, which, directory, step, classifier
  method: str                    # CAM method of the baseline CAM
  threshold: float               # default box threshold (val-best of the checkpoint)
  threshold_source: str
  batch_size: int
  with_cam: bool
  _fn: Callable = dataclasses.field(repr=False, default=None)

  @property
  def eval_size(self) -> int:
    return int(self.config.data.eval_size)

  @property
  def has_fcam(self) -> bool:
    return "decoder" in self.variables

  @property
  def map_name(self) -> str:
    """The map the boxes and overlays are made from."""
    return "fcam" if self.has_fcam else "cam"

  def preprocess(self, rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 (S, S, 3), as the eval pipeline resizes."""
    return pipeline.EvalTransform(self.eval_size).map({"image": rgb})["image"]

  def predict_batch(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """Host arrays for uint8 (n, S, S, 3) images, run in padded batches of `batch_size`.

    Keys: class (n,), probability (n,), logits (n, classes), fcam (n, S, S) unless
    CAM-only, cam (n, S, S) with `with_cam` or CAM-only.
    """
    images = np.asarray(images)
    s = self.eval_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
      raise ValueError(f"predict_batch takes uint8 (n, {s}, {s}, 3) images; got "
                       f"{images.dtype} {images.shape}")
    n, b = len(images), self.batch_size
    outs = []
    for start in range(0, n, b):
      chunk = images[start:start + b]
      padded = np.zeros((b, s, s, 3), np.uint8)
      padded[:len(chunk)] = chunk
      out = jax.device_get(self._fn(self.variables, padded))
      outs.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
    if not outs:
      return {}
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def run(self, inputs: Sequence[str], output: str, *, threshold: Optional[float] = None,
          overlay: bool = True, num_threads: int = 4) -> Dict[str, Any]:
    return run(self, inputs, output, threshold=threshold, overlay=overlay,
               num_threads=num_threads)


def load_predictor(workdir: str, checkpoint: str = "best", method: Optional[str] = None,
                   with_cam: bool = False, batch_size: Optional[int] = None) -> Predictor:
  """The classifier (+ decoder) of a `python -m fcam_jax.main` workdir.

  `checkpoint` picks the stage-2 decoder step (`best` by validation, or `last`); the
  classifier is the one stage 2 was trained on (stage-1 best, or
  `config.stage2.classifier_checkpoint`). Without a stage-2 checkpoint the predictor
  gives the stage-1 CAM only, from the `checkpoint` step of stage 1. `method`
  overrides `config.cam.method` for the CAM.
  """
  if checkpoint not in CHECKPOINTS:
    raise PredictError(f"checkpoint={checkpoint!r}: must be one of {', '.join(CHECKPOINTS)}")
  config = load_config(workdir)
  if method is not None and method not in config_lib.CAM_METHODS:
    raise PredictError(f"method={method!r}: must be one of {', '.join(config_lib.CAM_METHODS)}")
  batch_size = batch_size or config.eval.batch_size
  if batch_size <= 0:
    raise PredictError(f"batch_size={batch_size}: must be > 0")
  stage2_dir = os.path.join(workdir, "stage2")
  stage1_dir = os.path.join(workdir, "stage1")
  found = _select_step(os.path.join(stage2_dir, "checkpoints"), checkpoint)
  variables, info = {}, {"workdir": os.path.abspath(workdir), "which": checkpoint}
  if found is not None:
    from fcam_jax import train_fcam  # pylint: disable=g-import-not-at-top
    ckpt, step = found
    try:
      variables["decoder"] = _restore_variables(ckpt, step)
      tau, source = _val_threshold(ckpt, step, stage2_dir)
    finally:
      ckpt.close()
    variables["classifier"], clf_step = train_fcam.load_classifier(config, workdir)
    info.update(stage="stage2", directory=ckpt.directory, step=step,
                classifier_directory=os.path.abspath(config.stage2.classifier_checkpoint or
                                                     os.path.join(stage1_dir, "checkpoints")),
                classifier_step=clf_step)
  else:
    candidates = [os.path.join(stage1_dir, "checkpoints")]
    if config.stage2.classifier_checkpoint:
      candidates.append(config.stage2.classifier_checkpoint)
    found = next(filter(None, (_select_step(d, checkpoint) for d in candidates)), None)
    if found is None:
      raise ckpt_lib.CheckpointNotFoundError(
          f"no checkpoint in {os.path.join(stage2_dir, 'checkpoints')} nor in "
          f"{' or '.join(candidates)}: train with python -m fcam_jax.main first")
    ckpt, step = found
    try:
      variables["classifier"] = _restore_variables(ckpt, step)
      tau, source = _val_threshold(ckpt, step, os.path.dirname(ckpt.directory))
    finally:
      ckpt.close()
    info.update(stage="stage1", directory=ckpt.directory, step=step)
    logging.warning("no stage-2 checkpoint in %s: writing the baseline CAM only (stage 1 %s "
                    "step %d)", stage2_dir, ckpt.directory, step)
    if method and method != config.cam.method and tau is not None:
      logging.warning("the val threshold %.3f was selected for %s, not %s", tau,
                      config.cam.method, method)
  if tau is None:
    tau, source = DEFAULT_THRESHOLD, "default (no validation threshold found)"
    logging.warning("no val %s for %s step %d: box threshold %.2f", THRESHOLD_KEY,
                    info["directory"], info["step"], tau)
  logging.info("predict: %s %s step %d, box threshold %.3f (%s)", info["stage"], checkpoint,
               info["step"], tau, source)

  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  classifier = models.build_classifier(config.model, dtype=dtype)
  decoder = None
  if "decoder" in variables:
    decoder = decoder_lib.decoder_for(models.backbone_class(config.model.backbone),
                                      config_lib.decoder_channels(config), dtype=dtype)
  if method and decoder is not None and not with_cam:
    logging.warning("method=%s only changes the baseline CAM: add --with_cam", method)
  cam_config = ml_collections.ConfigDict(config.cam.to_dict())
  cam_config.method = method or config.cam.method
  fn = jax.jit(functools.partial(predict_maps, classifier=classifier, decoder=decoder,
                                 cam_config=cam_config, with_cam=with_cam),
               compiler_options=parallel.compiler_options(config.get("cpu_ynnpack", False))
               or None)
  rng = jax.random.key(config.seed + 1)
  variables = jax.device_put(variables)
  return Predictor(config=config, variables=variables, checkpoint=info,
                   method=cam_config.method, threshold=tau, threshold_source=source,
                   batch_size=int(batch_size), with_cam=with_cam or decoder is None,
                   _fn=lambda v, x: fn(v, x, rng))


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


def upsample(scoremap: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 (height, width) bilinear (half-pixel centres, edges clamped), clipped to [0, 1]."""
  m = np.asarray(scoremap, np.float32)
  if m.shape != (height, width):
    m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
  return np.clip(m, 0.0, 1.0, out=m)


def quantize(scoremap: np.ndarray) -> np.ndarray:
  """`metrics.boxes.quantize` (uint8(float64(map) * 255)) row block by row block."""
  q = np.empty(scoremap.shape, np.uint8)
  rows = max(1, (1 << 20) // max(1, scoremap.shape[1]))
  for r in range(0, scoremap.shape[0], rows):
    q[r:r + rows] = boxes_lib.quantize(scoremap[r:r + rows])
  return q


def largest_box(q: np.ndarray, threshold: float) -> Optional[List[int]]:
  """The WSOL evaluator's box of a uint8 map at `threshold`, None when nothing is above it.

  Foreground `q > int(threshold * max(q))`; OpenCV contours (RETR_TREE,
  CHAIN_APPROX_SIMPLE); the first contour of largest area; its bounding rect
  `x, y, min(x + w, W - 1), min(y + h, H - 1)`.
  """
  level = int(threshold * int(q.max()))
  binary = cv2.threshold(q, level, 1, cv2.THRESH_BINARY)[1]
  contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
  if not contours:
    return None
  x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
  height, width = q.shape
  return [int(x), int(y), int(min(x + w, width - 1)), int(min(y + h, height - 1))]


def overlay_image(rgb: np.ndarray, q: np.ndarray, box: Optional[List[int]]) -> np.ndarray:
  """BGR uint8: the image half-blended with the JET colour map of `q`, the box in green."""
  out = cv2.addWeighted(np.ascontiguousarray(rgb[..., ::-1]), 0.5,
                        cv2.applyColorMap(q, cv2.COLORMAP_JET), 0.5, 0)
  if box is not None:
    thick = max(1, round(max(q.shape) / 300))
    cv2.rectangle(out, tuple(box[:2]), tuple(box[2:]), (0, 255, 0), thick)
  return out


def _save_npy(path: str, array: np.ndarray):
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.save(f, array)
  os.replace(tmp, path)


def _save_png(path: str, bgr: np.ndarray):
  ok, data = cv2.imencode(".png", bgr)
  if not ok:
    raise OSError(f"{path}: PNG encoding failed")
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data.tobytes())
  os.replace(tmp, path)


@dataclasses.dataclass
class _Item:
  path: str
  rel: str
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
  files, q = {}, None
  for name, suffix in (("cam", ".cam.npy"), ("fcam", ".npy")):  # the box map last
    if name in pred:
      full = upsample(pred[name], height, width)
      _save_npy(base + suffix, full)
      files[name] = item.rel + suffix
      if name == predictor.map_name:
        q = quantize(full)
      del full
  box = largest_box(q, threshold)
  record = {"input": item.path, "outputs": files, "size": [int(width), int(height)],
            "class": int(pred["class"]), "probability": float(pred["probability"]),
            "threshold": float(threshold), "map": predictor.map_name,
            "boxes": [box] if box is not None else []}
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
    _save_png(base + ".overlay.png", overlay_image(rgb, q, obox))
    files["overlay"] = item.rel + ".overlay.png"
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


def run(predictor: Predictor, inputs: Sequence[str], output: str, *,
        threshold: Optional[float] = None, overlay: bool = True,
        num_threads: int = 4) -> Dict[str, Any]:
  """Predicts every image under `inputs` into `output`; returns predictions.json's content.

  Unreadable files are listed under `errors` with the reason and skipped.
  """
  if threshold is not None and not 0.0 <= threshold <= 1.0:
    raise PredictError(f"threshold={threshold}: must be in [0, 1]")
  tau = predictor.threshold if threshold is None else float(threshold)
  t0 = time.time()
  os.makedirs(output, exist_ok=True)
  files, errors = find_images(inputs, exclude=output)
  for e in errors:
    logging.warning("%s: %s", e["input"], e["reason"])
  total, done, last_log = len(files), 0, t0
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
      preds = predictor.predict_batch(np.stack([item.image for item in batch]))
      for i, item in enumerate(batch):
        item.image = None
        pred = {k: v[i] for k, v in preds.items()}
        writes.append((item, pool.submit(_write, predictor, item, pred, output, tau, overlay)))
      while len(writes) > 2 * max(1, num_threads):
        collect(*writes.popleft())

    batch = []
    loads = _ordered(pool, functools.partial(_load, predictor),
                     (_Item(path, rel) for path, rel in files), window=2 * predictor.batch_size)
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
      "cam_method": predictor.method, "eval_size": predictor.eval_size,
      "threshold": tau, "threshold_source": predictor.threshold_source if threshold is None
      else "--threshold", "num_files": total, "num_images": len(records),
      "num_errors": len(errors), "wall_time_s": wall,
      "images_per_s": len(records) / max(wall, 1e-9), "images": records, "errors": errors}
  path = os.path.join(output, "predictions.json")
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)
  logging.info("predict: %d images, %d errors, %.1f images/s -> %s", len(records), len(errors),
               summary["images_per_s"], path)
  return summary


# ----------------------------------------------------------------------------- CLI

def define_flags():
  """The CLI flags; defined on demand, as fcam_jax.main (imported by others) owns --workdir."""
  flags.DEFINE_string("workdir", None, "A python -m fcam_jax.main workdir.")
  flags.DEFINE_multi_string("input", None, "Image file or folder (repeatable).")
  flags.DEFINE_string("output", None, "Folder for the maps, overlays and predictions.json.")
  flags.DEFINE_enum("checkpoint", "best", list(CHECKPOINTS),
                    "Stage-2 (or stage-1) step: best by validation, or last.")
  flags.DEFINE_enum("method", None, list(config_lib.CAM_METHODS),
                    "CAM method of the baseline CAM (default: the config's).")
  flags.DEFINE_bool("with_cam", False, "Also write the baseline CAM (.cam.npy).")
  flags.DEFINE_float("threshold", None,
                     "Box threshold in [0, 1] (default: the checkpoint's val best tau).")
  flags.DEFINE_integer("batch_size", None, "Batch size (default config.eval.batch_size).")
  flags.DEFINE_bool("overlay", True, "Write the heat-map overlay PNGs.")
  flags.DEFINE_integer("num_threads", 4, "Host threads decoding and writing images.")
  flags.mark_flags_as_required(["workdir", "input", "output"])


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records of orbax (a dozen lines per restore)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or "/orbax/" not in record.pathname


def _fail(message: str, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if f.threshold is not None and not 0.0 <= f.threshold <= 1.0:
    _fail(f"--threshold={f.threshold}: must be in [0, 1]")
  if f.batch_size is not None and f.batch_size <= 0:
    _fail(f"--batch_size={f.batch_size}: must be > 0")
  try:
    predictor = load_predictor(f.workdir, f.checkpoint, f.method, f.with_cam, f.batch_size)
  except (PredictError, FileNotFoundError) as e:
    _fail(str(e))
  summary = predictor.run(f.input, f.output, threshold=f.threshold, overlay=f.overlay,
                          num_threads=f.num_threads)
  if not summary["num_images"]:
    _fail(f"no image could be processed from {', '.join(f.input)} ({summary['num_errors']} "
          f"errors, listed in {os.path.join(f.output, 'predictions.json')})", code=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
