"""Pseudo-label seeds from CAMs and the partial cross-entropy on them (docs/design.md §6).

Per image, from its CAM (min-max normalized, upsampled to the input size):

* q = uint8(cam * 255) (truncation). A constant q gives no seeds.
* Foreground region: q > Otsu(q), eroded once by an `erosion` x `erosion` square; if the
  erosion empties it, the uneroded region. Otsu: the level t in 0..255 maximizing the
  between-class variance w1 w2 (m1 - m2)^2 of {q <= t} vs {q > t} (t with an empty class
  excluded), the first (lowest) t among equal maxima (as OpenCV and skimage), then clamped
  to [1, 254]. Erosion treats pixels outside the image as foreground (they never erode),
  as the original's kornia `erosion` (geodesic border) and OpenCV's default border.
* Background region: the `int(n_minus * H * W)` pixels with the lowest float CAM; ties
  broken by raster order (a stable sort).
* `sl_max` foreground and `sl_min` background pixels sampled uniformly without replacement
  (all of them if the region is smaller), each set dilated by a `dilation` square; pixels
  in both dilated sets are ignored.
"""

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

FOREGROUND = 1
BACKGROUND = 0
IGNORE = -1


def sample_seeds(cams, key, *, n_minus: float = 0.1, sl_max: int = 1, sl_min: int = 1,
                 erosion: int = 11, dilation: int = 3):
  """cams (B,H,W) in [0,1] -> seeds (B,H,W) int32 in {FOREGROUND, BACKGROUND, IGNORE}.

  `key` is one PRNG key, split per image, or a (B,) array of per-image keys (so that
  an image's seeds do not depend on how the batch is split over devices).
  """
  fg, bg = seed_regions(cams, n_minus=n_minus, erosion=erosion)
  b = cams.shape[0]
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == (b,):
    keys = jax.vmap(lambda k: jax.random.split(k, 2))(key).swapaxes(0, 1)
  else:
    keys = jax.random.split(key, (2, b))
  sample = jax.vmap(_sample, in_axes=(0, None, 0))
  fg = _dilate(sample(fg, sl_max, keys[0]), dilation)
  bg = _dilate(sample(bg, sl_min, keys[1]), dilation)
  seeds = jnp.where(fg & ~bg, FOREGROUND, IGNORE)
  return jnp.where(bg & ~fg, BACKGROUND, seeds).astype(jnp.int32)


def seed_regions(cams, *, n_minus: float = 0.1, erosion: int = 11):
  """(foreground, background) sampling regions (B,H,W) bool; both empty where q is constant."""
  return jax.vmap(lambda cam: _regions_one(cam, n_minus, erosion))(cams.astype(jnp.float32))


def otsu_threshold(q):
  """Otsu level of an integer image q (values 0..255), before clamping; 0 if q is constant."""
  hist = jnp.zeros(256, jnp.int32).at[q.reshape(-1)].add(1)
  w1 = jnp.cumsum(hist)  # pixels <= t
  s1 = jnp.cumsum(hist * jnp.arange(256, dtype=jnp.int32))  # their level sum (< 2^31)
  n, total = w1[-1], s1[-1]
  w2 = n - w1
  # w1 w2 (m1 - m2)^2 = (n s1 - total w1)^2 / (n^2 w1 w2); n^2 is common to all t.
  num = n.astype(jnp.float32) * s1.astype(jnp.float32) - total.astype(jnp.float32) * w1
  valid = (w1 > 0) & (w2 > 0)
  den = jnp.where(valid, w1.astype(jnp.float32) * w2.astype(jnp.float32), 1.0)
  return jnp.argmax(jnp.where(valid, num * num / den, -1.0)).astype(jnp.int32)


def _regions_one(cam, n_minus, erosion):
  h, w = cam.shape
  q = (jnp.clip(cam, 0.0, 1.0) * 255).astype(jnp.int32)  # truncation, as uint8(cam * 255)
  nonconstant = jnp.min(q) < jnp.max(q)
  fg = q > jnp.clip(otsu_threshold(q), 1, 254)
  eroded = _erode(fg, erosion)
  fg = jnp.where(jnp.any(eroded), eroded, fg)
  bg = _lowest(cam, int(n_minus * h * w))
  return fg & nonconstant, bg & nonconstant


def _window_reduce(x, size: int, op, init):
  """Separable size x size window of `op` over the last two axes; outside pixels are `init`
  (the identity of `op`), so they never win."""
  for axis in (x.ndim - 2, x.ndim - 1):
    dims = tuple(size if a == axis else 1 for a in range(x.ndim))
    pads = tuple((size // 2, size // 2) if a == axis else (0, 0) for a in range(x.ndim))
    x = lax.reduce_window(x, init, op, dims, (1,) * x.ndim, pads)
  return x


def _erode(mask, size: int):
  if size <= 1:
    return mask
  return _window_reduce(mask.astype(jnp.int32), size, lax.min, 1) > 0


def _dilate(mask, size: int):
  if size <= 1:
    return mask
  return _window_reduce(mask.astype(jnp.int32), size, lax.max, 0) > 0


def _lowest(cam, count: int):
  """Mask of the `count` lowest pixels of `cam`, ties in raster order (stable sort)."""
  if count <= 0:
    return jnp.zeros(cam.shape, bool)
  flat = cam.reshape(-1)
  # Non-negative float32 order == order of the int32 bit patterns; values are in [0, 1].
  bits = lax.bitcast_convert_type(jnp.maximum(flat, 0.0), jnp.int32)

  def step(_, bounds):  # smallest v with #(bits <= v) >= count lies in [lo, hi]
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits <= mid) >= count
    return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

  kth, _ = lax.fori_loop(0, 32, step, (jnp.int32(0), jnp.max(bits)))
  below = bits < kth
  ties = bits == kth
  need = count - jnp.sum(below)
  return (below | (ties & (jnp.cumsum(ties) <= need))).reshape(cam.shape)


def _sample(region, count: int, key):
  """Up to `count` pixels of `region` (H,W), uniformly without replacement, as a mask."""
  if count <= 0:
    return jnp.zeros(region.shape, bool)
  score = jnp.where(region.reshape(-1), jax.random.uniform(key, (region.size,)), -1.0)
  values, index = lax.top_k(score, min(count, region.size))
  picked = jnp.zeros(region.size, bool).at[index].set(values >= 0.0)
  return picked.reshape(region.shape)


def partial_cross_entropy(logits, seeds, axis_name: Optional[str] = None):
  """Mean cross-entropy over the labelled pixels of the batch (0 if none).

  logits (B,H,W,K), seeds (B,H,W) int with IGNORE (-1) for unlabelled pixels. With
  `axis_name` (inside pmap), the batch is the global one: the per-device values are
  scaled so that their mean over the axis is the global mean, as one device computes.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  labelled = seeds >= 0
  label = jnp.clip(seeds, 0, logits.shape[-1] - 1)
  nll = -jnp.take_along_axis(logp, label[..., None], axis=-1)[..., 0]
  total = jnp.sum(jnp.where(labelled, nll, 0.0))
  count = jnp.sum(labelled).astype(jnp.float32)
  if axis_name is not None:
    total = total * lax.psum(1, axis_name)
    count = lax.psum(count, axis_name)
  return total / jnp.maximum(count, 1.0)
