"""CAM methods (docs/design.md §4) as pure, batched functions of a classifier and its taps.

Notation: A = the tap's features (B, h, w, C), c = the class of each image, y_c its
logit (pre-softmax), G = dy_c / dA. Every method returns raw (B, h, w) float32 maps
at the tap's resolution; `maps.minmax_normalize` / `maps.upsample` come after.

At the last tap the WGAP head (docs/design.md §3) makes G = W[:, c] / (h w) everywhere, so
gradcam = xgradcam = ReLU(cam) / (h w) and smoothgradcampp = gradcampp there.

All functions trace under `jax.jit` / `jax.pmap`: the method, the tap and the
options are Python values read at trace time (close over them, or pass them as
static arguments); there are no host callbacks and no per-image Python loops.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from fcam_jax.cams.maps import minmax_normalize, upsample
from fcam_jax.models.classifier import Classifier
from fcam_jax.models.head import cam_weights

# The options read here, with their defaults: `config_lib.base_config().cam` holds them.
DEFAULT_OPTIONS = {
    "gradcampp_skip_alpha_division": False,
    "smooth_samples": 4,
    "smooth_std": 0.3,
    "scorecam_chunk": 32,
    "ablationcam_chunk": 32,
}

_HIGHEST = lax.Precision.HIGHEST


class _Inputs(NamedTuple):
  model: Classifier
  variables: Any
  tap: str
  a: jnp.ndarray          # the tap's features A, float32
  labels: jnp.ndarray     # (B,) int
  images: Optional[jnp.ndarray]
  rng: Optional[jnp.ndarray]
  options: Any

  def option(self, name):
    if self.options is not None:
      try:
        return self.options[name]
      except (KeyError, AttributeError):
        pass
    return DEFAULT_OPTIONS[name]

  def need_images(self, method):
    if self.images is None:
      raise ValueError(f"CAM method {method!r} runs the network on the input again: pass images=")
    return self.images


# ---------------------------------------------------------------------------- helpers


def _safe_div(num, den):
  """num / den, and 0 where den == 0 (no NaN, also in gradients)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _weighted(a, weights):
  """sum_k w_k A_k: (B, h, w, C) x (B, C) -> (B, h, w)."""
  return jnp.einsum("bhwk,bk->bhw", a, weights, precision=_HIGHEST)


def _label_logit(logits, labels):
  return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def logits_fn(model: Classifier, variables, tap: str) -> Callable:
  """a -> logits: the rest of the network after stage `tap` (inference mode)."""
  return lambda a: model.apply(variables, a, tap, method=Classifier.logits_from)


def class_gradients(model: Classifier, variables, a, labels, tap: str):
  """G = d logit[b, labels[b]] / d a[b] for every image b, float32, shape of `a`.

  One VJP for the batch: images do not interact in inference mode, so the one-hot
  cotangent of image b only reaches a[b].
  """
  logits, vjp = jax.vjp(logits_fn(model, variables, tap), a)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  (grads,) = vjp(onehot)
  return grads.astype(jnp.float32)


def _channel_chunks(x, chunk: int):
  """(..., C) -> (n, ..., chunk), zero-padded to n * chunk channels."""
  c = x.shape[-1]
  n = -(-c // chunk)
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n * chunk - c)])
  x = x.reshape(x.shape[:-1] + (n, chunk))
  return jnp.moveaxis(x, -2, 0)


def _unchunk(x, c: int):
  """(n, B, chunk) -> (B, c)."""
  return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1)[:, :c]


def _gradcampp_weights(a, g2, g3, relu_g):
  """w_k = sum_ij alpha ReLU(G), alpha = G^2 / (2 G^2 + sum_ij A G^3) (0 if den = 0)."""
  den = 2.0 * g2 + jnp.sum(a * g3, axis=(1, 2), keepdims=True)
  alpha = _safe_div(g2, den)
  return jnp.sum(alpha * relu_g, axis=(1, 2))


# ---------------------------------------------------------------------------- methods


def cam(x: _Inputs):
  """CAM* (Zhou et al., CVPR 2016): sum_k W[k, c] A_k; no ReLU, no bias."""
  last = x.model.backbone.STAGES[-1]
  if x.tap != last:
    raise ValueError(f"CAM uses the head's weights: it needs the last tap {last!r}, not {x.tap!r}")
  w = cam_weights(x.variables["params"]).astype(jnp.float32)  # (C, K)
  return _weighted(x.a, w.T[x.labels])


def gradcam(x: _Inputs):
  """GradCAM (Selvaraju et al., ICCV 2017): ReLU(sum_k mean_ij(G_k) A_k)."""
  g = class_gradients(x.model, x.variables, x.a, x.labels, x.tap)
  return jax.nn.relu(_weighted(x.a, jnp.mean(g, axis=(1, 2))))


def gradcampp(x: _Inputs):
  """GradCAM++ (Chattopadhyay et al., WACV 2018), docs/design.md §4.

  `gradcampp_skip_alpha_division=True`: the original code's w_k = sum_ij G^2 ReLU(G).
  """
  g = class_gradients(x.model, x.variables, x.a, x.labels, x.tap)
  g2 = g * g
  if x.option("gradcampp_skip_alpha_division"):
    w = jnp.sum(g2 * jax.nn.relu(g), axis=(1, 2))
  else:
    w = _gradcampp_weights(x.a, g2, g2 * g, jax.nn.relu(g))
  return jax.nn.relu(_weighted(x.a, w))


def smoothgradcampp(x: _Inputs):
  """Smooth-GradCAM++ (Omeiza et al., arXiv 1908.01224), docs/design.md §4.

  n = `smooth_samples` noisy inputs; sample i is
  `images + smooth_std * jax.random.normal(jax.random.split(rng, n)[i], images.shape)`.
  G^2 and G^3 are averaged over the samples, alpha uses them with A of the clean
  input, and w_k = sum_ij alpha ReLU(G of the last sample). Under pmap, fold the
  device index into `rng` so devices draw different noise. At the last tap of the
  WGAP classifier G = W[:, c] / hw does not depend on the input, so this equals
  gradcampp there (and XLA drops the noisy passes).
  """
  images = x.need_images("smoothgradcampp")
  if x.rng is None:
    raise ValueError("CAM method 'smoothgradcampp' needs rng= (a jax PRNG key) for its noise")
  n = int(x.option("smooth_samples"))
  std = float(x.option("smooth_std"))

  def sample(carry, key):
    g2, g3, _ = carry
    noise = std * jax.random.normal(key, images.shape, jnp.float32)
    noisy = (images.astype(jnp.float32) + noise).astype(images.dtype)
    _, taps = x.model.apply(x.variables, noisy)
    g = class_gradients(x.model, x.variables, taps[x.tap], x.labels, x.tap)
    return (g2 + g * g, g3 + g * g * g, g), None

  zeros = jnp.zeros_like(x.a)
  (g2, g3, g_last), _ = lax.scan(sample, (zeros, zeros, zeros), jax.random.split(x.rng, n))
  w = _gradcampp_weights(x.a, g2 / n, g3 / n, jax.nn.relu(g_last))
  return jax.nn.relu(_weighted(x.a, w))


def xgradcam(x: _Inputs):
  """XGradCAM (Fu et al., BMVC 2020): w_k = sum_ij(G A) / sum_ij A (0 if sum A = 0)."""
  g = class_gradients(x.model, x.variables, x.a, x.labels, x.tap)
  w = _safe_div(jnp.sum(g * x.a, axis=(1, 2)), jnp.sum(x.a, axis=(1, 2)))
  return jax.nn.relu(_weighted(x.a, w))


def layercam(x: _Inputs):
  """LayerCAM (Jiang et al., TIP 2021): ReLU(sum_k ReLU(G_k) * A_k), element-wise."""
  g = class_gradients(x.model, x.variables, x.a, x.labels, x.tap)
  return jax.nn.relu(jnp.sum(jax.nn.relu(g) * x.a, axis=-1))


def hirescam(x: _Inputs):
  """HiResCAM (Draelos & Carin, arXiv 2011.08891): ReLU(sum_k G_k * A_k), element-wise."""
  g = class_gradients(x.model, x.variables, x.a, x.labels, x.tap)
  return jax.nn.relu(jnp.sum(g * x.a, axis=-1))


def scorecam(x: _Inputs):
  """Score-CAM (Wang et al., CVPRW 2020): ReLU(sum_k s_k A_k).

  Each channel A_k is upsampled to the input size (bilinear, half-pixel), min-max
  normalized to [0, 1] and multiplies the normalized input; s_k = softmax over the
  classes of the logits of that masked input, at class c. As the authors' code: no
  baseline-image subtraction, and a constant channel (no usable mask) gets s_k = 0.
  (pytorch-grad-cam differs: it softmaxes the raw logit y_c over the channels.)
  Channels run `scorecam_chunk` at a time: B * chunk forward passes per step.
  """
  images = x.need_images("scorecam")
  b, h, w, c = x.a.shape
  size = images.shape[1:3]
  chunk = int(x.option("scorecam_chunk"))
  labels = jnp.repeat(x.labels, chunk)

  def scores(a_chunk):  # (B, h, w, chunk) -> (B, chunk)
    maps = jnp.moveaxis(a_chunk, -1, 1).reshape(b * chunk, h, w)
    span = jnp.max(maps, axis=(1, 2)) - jnp.min(maps, axis=(1, 2))
    masks = minmax_normalize(upsample(maps, size)).reshape(b, chunk, *size, 1)
    masked = (images[:, None].astype(jnp.float32) * masks).astype(images.dtype)
    logits, _ = x.model.apply(x.variables, masked.reshape(b * chunk, *images.shape[1:]))
    probs = _label_logit(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), labels)
    return jnp.where(span > 0, probs, 0.0).reshape(b, chunk)

  s = _unchunk(lax.map(scores, _channel_chunks(x.a, chunk)), c)
  return jax.nn.relu(_weighted(x.a, s))


def _ablation_drops(x: _Inputs, exact_head: bool = True):
  """(y_c, y_c - y_c^k) with y_c^k the logit when channel k of A is zeroed."""
  logits_from = logits_fn(x.model, x.variables, x.tap)
  y = _label_logit(logits_from(x.a), x.labels)
  b, c = x.a.shape[0], x.a.shape[-1]
  if exact_head and x.tap == x.model.backbone.STAGES[-1]:
    # After the last stage only the linear WGAP head (docs/design.md §3) remains, so zeroing
    # channel k lowers y_c by exactly W[k, c] * mean_ij A_k: no forward passes.
    w = cam_weights(x.variables["params"]).astype(jnp.float32).T[x.labels]  # (B, C)
    return y, w * jnp.mean(x.a, axis=(1, 2))
  chunk = int(x.option("ablationcam_chunk"))
  labels = jnp.repeat(x.labels, chunk)

  def ablated(ks):  # (chunk,) channel ids (>= C: padding, nothing zeroed) -> (B, chunk)
    keep = 1.0 - jax.nn.one_hot(ks, c, dtype=jnp.float32)  # (chunk, C)
    a = x.a[:, None] * keep[None, :, None, None, :]
    a = a.reshape(b * chunk, *x.a.shape[1:])
    return _label_logit(logits_from(a), labels).reshape(b, chunk)

  n = -(-c // chunk)
  y_k = _unchunk(lax.map(ablated, jnp.arange(n * chunk).reshape(n, chunk)), c)
  return y, y[:, None] - y_k


def ablationcam(x: _Inputs):
  """Ablation-CAM (Desai & Ramaswamy, WACV 2020): ReLU(sum_k w_k A_k).

  w_k = (y_c - y_c^k) / y_c, y_c^k the logit with channel k of A set to 0 (the
  paper's ablation; pytorch-grad-cam uses a very negative value when A can be
  negative). w = 0 where y_c = 0. Channels run `ablationcam_chunk` at a time through
  the rest of the network; for the last tap the linear head gives y_c^k exactly.
  """
  y, drops = _ablation_drops(x)
  return jax.nn.relu(_weighted(x.a, _safe_div(drops, y[:, None])))


def eigencam(x: _Inputs):
  """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): ReLU(projection on the 1st principal component).

  Per image, X = A as (h*w, C) with each channel's spatial mean removed (centred,
  as pytorch-grad-cam); the map is X v1 = s1 u1 (v1, u1 the first right/left
  singular vectors, from the eigendecomposition of the smaller Gram matrix), with the
  sign chosen so the map correlates positively with the channel-mean of A.
  """
  b, h, w, c = x.a.shape
  a = x.a.reshape(b, h * w, c)
  xc = a - jnp.mean(a, axis=1, keepdims=True)
  if h * w <= c:
    evals, evecs = jnp.linalg.eigh(jnp.einsum("bpc,bqc->bpq", xc, xc, precision=_HIGHEST))
    proj = evecs[..., -1] * jnp.sqrt(jnp.maximum(evals[..., -1:], 0.0))
  else:
    _, evecs = jnp.linalg.eigh(jnp.einsum("bpc,bpd->bcd", xc, xc, precision=_HIGHEST))
    proj = jnp.einsum("bpc,bc->bp", xc, evecs[..., -1], precision=_HIGHEST)
  mean_act = jnp.mean(a, axis=-1)
  corr = jnp.sum((proj - jnp.mean(proj, axis=1, keepdims=True)) *
                 (mean_act - jnp.mean(mean_act, axis=1, keepdims=True)), axis=1)
  proj = jnp.where(corr[:, None] < 0, -proj, proj)
  return jax.nn.relu(proj).reshape(b, h, w)


# name -> (function, display name); CAM* is the paper's name for its CAM (no ReLU).
_METHODS: Dict[str, Tuple[Callable[[_Inputs], jnp.ndarray], str]] = {
    "cam": (cam, "CAM*"), "gradcam": (gradcam, "GradCAM"), "gradcampp": (gradcampp, "GradCAM++"),
    "smoothgradcampp": (smoothgradcampp, "Smooth-GradCAM++"), "xgradcam": (xgradcam, "XGradCAM"),
    "layercam": (layercam, "LayerCAM"), "hirescam": (hirescam, "HiResCAM"),
    "scorecam": (scorecam, "ScoreCAM"), "ablationcam": (ablationcam, "AblationCAM"),
    "eigencam": (eigencam, "EigenCAM"),
}
METHODS = tuple(_METHODS)
DISPLAY_NAMES = {name: display for name, (_, display) in _METHODS.items()}
PAPER_METHODS = METHODS[:6]  # the six of the paper's Table 1, in its order


# ---------------------------------------------------------------------------- entry points


def compute_from_taps(method: str, model: Classifier, variables, taps: Dict[str, jnp.ndarray],
                      labels, *, images=None, tap: Optional[str] = None, rng=None,
                      options=None) -> jnp.ndarray:
  """Raw (B, h, w) float32 CAMs of class `labels[b]`, from `(_, taps) = model.apply(variables, images)`.

  Gradient methods only run the network after `tap` (one VJP for the batch);
  smoothgradcampp and scorecam run it on (noisy / masked) `images` again.
  """
  if method not in _METHODS:
    raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
  tap = tap or model.backbone.CAM_TAP
  if tap not in taps:
    raise ValueError(f"tap {tap!r} is not among the computed taps {sorted(taps)}")
  inputs = _Inputs(model, variables, tap, taps[tap].astype(jnp.float32), jnp.asarray(labels),
                   images, rng, options)
  return _METHODS[method][0](inputs).astype(jnp.float32)


def compute(method: str, model: Classifier, variables, images, labels, *,
            tap: Optional[str] = None, rng=None, options=None) -> jnp.ndarray:
  """Raw (B, h, w) float32 CAMs of class `labels[b]` for normalized `images` (B, H, W, 3).

  `tap` defaults to the backbone's CAM_TAP; `options` is `config.cam` (or None for
  the defaults); `rng` is only used by smoothgradcampp. The model runs in
  inference mode (BatchNorm running statistics).
  """
  _, taps = model.apply(variables, images)
  return compute_from_taps(method, model, variables, taps, labels, images=images, tap=tap,
                           rng=rng, options=options)


def upsampled_maps(model: Classifier, variables, taps: Dict[str, jnp.ndarray], images, labels,
                   rng, config) -> jnp.ndarray:
  """The CAMs of `labels` from a forward pass's taps, by `config.method` at `config.tap`
  (`config` is `config.cam`), min-max normalized and upsampled to the input size."""
  raw = compute_from_taps(config.method, model, variables, taps, labels, images=images,
                          tap=config.tap or None, rng=rng, options=config)
  return upsample(minmax_normalize(raw.astype(jnp.float32)), images.shape[1:3])
