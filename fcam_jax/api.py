"""Localization from Python (a notebook, a script): maps, classes and boxes for your images.

  from fcam_jax import api
  localizer = api.load("/tmp/fcam_synthetic")         # a python -m fcam_jax.main workdir
  result = localizer(images)                          # F-CAM of a list of HxWx3 images
  result = localizer(images, targets=[3, 0], method="gradcam")  # GradCAM of classes 3, 0
  result.maps[0]          # (H0, W0) float32 in [0, 1], at the first image's own size
  result.boxes[0]         # [x0, y0, x1, y1] in its pixels, or None
  rgb = api.overlay(images[0], result.maps[0], result.boxes[0])

Images: uint8, or float in [0, 1] (in [0, 255] if any value is above 1); HxWx3 RGB,
HxWx4 (alpha dropped), HxW or HxWx1 grey; any size (each is resized to the model's
`config.data.eval_size` as in evaluation, and its map resized back). `method`:
'fcam' (the default where stage 2 was trained: class-agnostic, `targets` do not change
it) or any CAM method of `fcam_jax.cams.METHODS`, computed for `targets` (one class per
image; default: the predicted class). Boxes are the WSOL evaluator's largest-contour
box at `threshold` (default: the checkpoint's validation `best_tau_MaxBoxAcc`).

Calls run in batches of a fixed shape (the last one padded), so repeated calls with any
number of images of any sizes compile each method once.
"""

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Sequence

import cv2
import jax
import ml_collections
import numpy as np

from fcam_jax import cams
from fcam_jax import inference
from fcam_jax import metrics
from fcam_jax import parallel
from fcam_jax.data import pipeline

FCAM = "fcam"


@dataclasses.dataclass
class Localization:
  """What a `Localizer` call returns, one entry per image."""
  maps: List[np.ndarray]          # (H, W) float32 in [0, 1], each at its image's size
  boxes: List[Optional[List[int]]]  # [x0, y0, x1, y1] (inclusive pixels), None: no contour
  classes: np.ndarray             # (n,) the predicted (top-1) class
  targets: np.ndarray             # (n,) the class each CAM was computed for
  probabilities: np.ndarray       # (n, num_classes) softmax of the logits
  method: str
  threshold: float


def to_rgb_uint8(image) -> np.ndarray:
  """An image as uint8 (H, W, 3): grey repeated, alpha dropped, floats scaled to 0..255."""
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) == 0:
    raise ValueError(f"an image must be HxW, HxWx1, HxWx3 or HxWx4; got shape {a.shape}")
  if a.shape[2] == 4:
    a = a[..., :3]
  elif a.shape[2] == 1:
    a = np.repeat(a, 3, axis=2)
  if a.dtype == np.uint8:
    return np.ascontiguousarray(a)
  if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
    raise ValueError(f"images must be uint8 or float; got {a.dtype}")
  a = a.astype(np.float64)
  if not np.isfinite(a).all():
    raise ValueError("an image has NaN or infinite values")
  if a.max(initial=0.0) <= 1.0:
    a = a * 255.0
  return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def resize_map(scoremap: np.ndarray, height: int, width: int) -> np.ndarray:
  """float32 (height, width) bilinear (half-pixel centres, edges clamped), clipped to [0, 1]."""
  m = np.asarray(scoremap, np.float32)
  if m.shape != (height, width):
    m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
  return np.clip(m, 0.0, 1.0, out=m)


def quantize(scoremap: np.ndarray) -> np.ndarray:
  """`metrics.quantize` (uint8(float64(map) * 255)) in row blocks, for huge maps."""
  q = np.empty(scoremap.shape, np.uint8)
  rows = max(1, (1 << 20) // max(1, scoremap.shape[1]))
  for r in range(0, scoremap.shape[0], rows):
    q[r:r + rows] = metrics.quantize(scoremap[r:r + rows])
  return q


def box(scoremap: np.ndarray, threshold: float) -> Optional[List[int]]:
  """The evaluator's largest-contour box of a map in [0, 1] at `threshold`, or None."""
  b = metrics.largest_contour_box(quantize(scoremap), threshold)
  return None if b is None else [int(v) for v in b]


def overlay(image, scoremap: np.ndarray, box_: Optional[Sequence[int]] = None,
            alpha: float = 0.5) -> np.ndarray:
  """RGB uint8: the image blended with the JET colour map of `scoremap` (float in [0, 1],
  or uint8 0..255; resized to the image if needed) and `box_` [x0, y0, x1, y1] in green."""
  rgb = to_rgb_uint8(image)
  h, w = rgb.shape[:2]
  scoremap = np.asarray(scoremap)
  if scoremap.dtype == np.uint8:
    q = scoremap if scoremap.shape == (h, w) else cv2.resize(scoremap, (w, h))
  else:
    q = quantize(resize_map(scoremap, h, w))
  heat = cv2.applyColorMap(q, cv2.COLORMAP_JET)[..., ::-1]
  out = cv2.addWeighted(rgb, 1 - alpha, np.ascontiguousarray(heat), alpha, 0)
  if box_ is not None:
    thick = max(1, round(max(h, w) / 300))
    cv2.rectangle(out, tuple(int(v) for v in box_[:2]), tuple(int(v) for v in box_[2:]),
                  (0, 255, 0), thick)
  return out


class Localizer:
  """A trained workdir's classifier (+ F-CAM decoder), called on batches of images."""

  def __init__(self, trained: inference.TrainedModel, batch_size: Optional[int] = None):
    self.trained = trained
    self.config: ml_collections.ConfigDict = trained.config
    self.batch_size = int(batch_size or self.config.eval.batch_size)
    if self.batch_size <= 0:
      raise inference.WorkdirError(f"batch_size={self.batch_size}: must be > 0")
    self._compiled: Dict[tuple, Any] = {}
    self._rng = jax.random.key(self.config.seed + 1)

  @property
  def eval_size(self) -> int:
    return self.trained.eval_size

  @property
  def has_fcam(self) -> bool:
    return self.trained.decoder is not None

  @property
  def default_method(self) -> str:
    return FCAM if self.has_fcam else self.config.cam.method

  @property
  def threshold(self) -> float:
    return self.trained.threshold

  @property
  def checkpoint(self) -> Dict[str, Any]:
    return self.trained.checkpoint

  def _check_method(self, method: str):
    if method == FCAM and not self.has_fcam:
      raise ValueError(f"method='fcam': {self.checkpoint['workdir']} has no stage-2 decoder; "
                       f"use a CAM method ({', '.join(cams.METHODS)})")
    if method != FCAM and method not in cams.METHODS:
      raise ValueError(f"method={method!r}: must be 'fcam' or one of {', '.join(cams.METHODS)}")

  def _function(self, cam_method: Optional[str], with_fcam: bool):
    key = (cam_method, with_fcam)
    if key not in self._compiled:
      cam_config = ml_collections.ConfigDict(self.config.cam.to_dict())
      if cam_method is not None:
        cam_config.method = cam_method
      fn = functools.partial(inference.forward, classifier=self.trained.classifier,
                             decoder=self.trained.decoder if with_fcam else None,
                             cam_config=cam_config, with_cam=cam_method is not None)
      options = parallel.compiler_options(self.config.get("cpu_ynnpack", False)) or None
      self._compiled[key] = jax.jit(fn, compiler_options=options)
    return self._compiled[key]

  def resize(self, image) -> np.ndarray:
    """An image as the model sees it: uint8 (S, S, 3), resized as in evaluation."""
    return pipeline.EvalTransform(self.eval_size).map({"image": to_rgb_uint8(image)})["image"]

  def predict_resized(self, images: np.ndarray, targets: Optional[Sequence[int]] = None,
                      cam_method: Optional[str] = None, with_fcam: bool = True
                      ) -> Dict[str, np.ndarray]:
    """Host arrays for uint8 (n, S, S, 3) images at the eval size, in padded batches.

    Keys: `class` (n,) top-1, `probability` (n,) its probability, `probabilities`
    (n, K), `logits` (n, K); `cam` (n, S, S) of `targets` (None: the top-1 class) by
    `cam_method` when given; `fcam` (n, S, S) when `with_fcam` and stage 2 exists.
    """
    images = np.asarray(images)
    s, b = self.eval_size, self.batch_size
    if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
      raise ValueError(f"predict_resized takes uint8 (n, {s}, {s}, 3) images; got "
                       f"{images.dtype} {images.shape}")
    n = len(images)
    if targets is not None:
      targets = np.asarray(targets, np.int64).reshape(-1)
      k = self.config.model.num_classes
      if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images: give one class per image")
      if ((targets < 0) | (targets >= k)).any():
        raise ValueError(f"targets must be classes in [0, {k}); got {targets.tolist()}")
    fn = self._function(cam_method, with_fcam and self.has_fcam)
    outs = []
    for start in range(0, n, b):
      chunk = images[start:start + b]
      padded = np.zeros((b, s, s, 3), np.uint8)
      padded[:len(chunk)] = chunk
      labels = None
      if targets is not None:
        labels = np.zeros(b, np.int32)
        labels[:len(chunk)] = targets[start:start + b]
      out = jax.device_get(fn(self.trained.variables, padded, labels, self._rng))
      outs.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
    if not outs:
      return {}
    out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    logits = out["logits"].astype(np.float64)  # on the host: no program per batch count
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    out["class"] = np.argmax(logits, axis=-1)  # ties: the lower class, as the evaluator
    out["probabilities"] = probs
    out["probability"] = np.take_along_axis(probs, out["class"][:, None], 1)[:, 0]
    return out

  def __call__(self, images: Sequence, targets: Optional[Sequence[int]] = None,
               method: Optional[str] = None, threshold: Optional[float] = None
               ) -> Localization:
    """Maps, boxes and classes of `images` (a list of arrays, or an (n, H, W[, C]) array)."""
    method = method or self.default_method
    self._check_method(method)
    tau = self.threshold if threshold is None else float(threshold)
    if not 0.0 <= tau <= 1.0:
      raise ValueError(f"threshold={tau}: must be in [0, 1]")
    images = list(images)
    sizes = [to_rgb_uint8(im).shape[:2] for im in images]
    resized = np.stack([self.resize(im) for im in images]) if images else np.zeros(
        (0, self.eval_size, self.eval_size, 3), np.uint8)
    out = self.predict_resized(resized, targets, None if method == FCAM else method,
                               with_fcam=method == FCAM)
    key = "fcam" if method == FCAM else "cam"
    maps = [resize_map(out[key][i], h, w) for i, (h, w) in enumerate(sizes)]
    classes = out.get("class", np.zeros(0, np.int64))
    return Localization(
        maps=maps, boxes=[box(m, tau) for m in maps], classes=classes,
        targets=(np.asarray(targets, np.int64).reshape(-1) if targets is not None
                 else classes.copy()),
        probabilities=out.get("probabilities", np.zeros((0, self.config.model.num_classes))),
        method=method, threshold=tau)


def load(workdir: str, checkpoint: str = "best", batch_size: Optional[int] = None) -> Localizer:
  """The Localizer of a `python -m fcam_jax.main` workdir (`checkpoint`: 'best' by
  validation, or 'last'; a workdir with stage 1 only gives CAM methods only)."""
  return Localizer(inference.load_trained(workdir, checkpoint), batch_size)
