"""Deterministic natural-looking test images and decoder-like class probabilities.

`natural_set(size, seed)` gives (kinds, images (N,H,W,3) in 0..255 integers, logits
(N,H,W,2)): each kind of image with two logit fields, a smooth random one and one that
follows an object region (as a decoder's would after some training). The kinds cover
what breaks grid approximations of the bilateral kernel: gratings (fine and coarse,
sinusoidal and square), low-frequency colour noise with a 1/f^2 spectrum, grey images
(R = G = B, every pixel on the colour diagonal), flat regions with sharp or soft edges,
objects on clutter (a dead-leaves background), saturated areas, sensor noise from none
to strong, and combinations; all quantised to 8 bits.
"""

import numpy as np

KINDS = ("grating", "square_grating", "colour_noise", "grey_noise", "grey_shapes",
         "sharp_edges", "soft_edges", "object_on_clutter", "object_on_smooth", "saturated",
         "grating_object_on_noise", "grey_object_on_grating")


def _coords(size):
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  return yy, xx


def _blur(x, sigma):
  """Gaussian blur (reflecting borders) of the first two axes, sigma in pixels."""
  if sigma <= 0:
    return x
  r = int(np.ceil(3 * sigma))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  for axis in (0, 1):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
    x = sum(k[i] * np.take(xp, np.arange(i, i + x.shape[axis]), axis=axis)
            for i in range(2 * r + 1))
  return x


def _pink_noise(rng, size, channels, power=2.0, cutoff=1.0):
  """Zero-mean unit-std noise with a 1/f^power spectrum (low-frequency), (H,W,C)."""
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  f = np.sqrt(fx ** 2 + fy ** 2) * size
  amp = 1.0 / np.maximum(f, cutoff) ** (power / 2)
  amp[0, 0] = 0.0
  out = np.empty((size, size, channels))
  for c in range(channels):
    spec = amp * (rng.normal(size=amp.shape) + 1j * rng.normal(size=amp.shape))
    x = np.fft.irfft2(spec, s=(size, size))
    out[..., c] = (x - x.mean()) / (x.std() + 1e-12)
  return out


def _colour(rng, grey=False):
  c = rng.uniform(0, 255, 3)
  return np.full(3, c[0]) if grey else c


def _mix(a, b, t):
  """a where t = 0, b where t = 1 (t (H,W) in [0, 1]; a, b colours or images)."""
  t = t[..., None]
  return (1 - t) * a + t * b


def _grating(rng, size, square=False, grey=False):
  yy, xx = _coords(size)
  theta = rng.uniform(0, np.pi)
  period = rng.uniform(3.0, size / 3)
  phase = (np.cos(theta) * xx + np.sin(theta) * yy) * 2 * np.pi / period + rng.uniform(0, 6.3)
  t = (np.sin(phase) > 0).astype(float) if square else 0.5 + 0.5 * np.sin(phase)
  return _mix(_colour(rng, grey), _colour(rng, grey), t)


def _dead_leaves(rng, size, grey=False, count=None, max_radius=0.2):
  """Occluding discs and boxes of random flat colours (a clutter / natural-image model)."""
  yy, xx = _coords(size)
  yy, xx = yy / size, xx / size
  img = np.zeros((size, size, 3)) + _colour(rng, grey)
  for _ in range(count or rng.integers(20, 60)):
    cy, cx = rng.uniform(-0.1, 1.1, 2)
    r = max_radius * rng.uniform(0.1, 1.0) ** 2
    if rng.random() < 0.6:
      inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    else:
      inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < rng.uniform(0.3, 1.5) * r)
    img[inside] = _colour(rng, grey)
  return img


def _object_mask(rng, size):
  """A blob-like object region: a wobbly ellipse covering 10-50 % of the image."""
  yy, xx = _coords(size)
  yy, xx = yy / size - rng.uniform(0.35, 0.65), xx / size - rng.uniform(0.35, 0.65)
  a, b = rng.uniform(0.15, 0.4, 2)
  angle = np.arctan2(yy, xx)
  wobble = 1 + sum(rng.uniform(0, 0.12) * np.cos(k * angle + rng.uniform(0, 6.3))
                   for k in (2, 3, 5))
  return (xx / a) ** 2 + (yy / b) ** 2 < wobble ** 2


def _partition(rng, size, colours):
  """Flat regions split by straight lines (sharp edges), `colours` region colours."""
  yy, xx = _coords(size)
  label = np.zeros((size, size), np.int64)
  for bit in range(3):
    theta = rng.uniform(0, np.pi)
    offset = rng.uniform(0.3, 0.7) * size * (abs(np.cos(theta)) + abs(np.sin(theta)))
    label += (np.cos(theta) * xx + np.sin(theta) * yy > offset).astype(np.int64) << bit
  return np.asarray(colours)[label % len(colours)]


def _image(kind, rng, size):
  """(image float 0..255 before noise, object mask or None, sensor noise std)."""
  noise = rng.choice([0.0, 2.0, 6.0, 15.0])
  if kind == "grating":
    return _grating(rng, size), None, noise
  if kind == "square_grating":
    return _grating(rng, size, square=True), None, 0.0
  if kind == "colour_noise":
    mean, spread = rng.uniform(60, 200, 3), rng.uniform(15, 60, 3)
    return mean + spread * _pink_noise(rng, size, 3, cutoff=2.0), None, noise
  if kind == "grey_noise":
    return 128 + rng.uniform(20, 60) * _pink_noise(rng, size, 1).repeat(3, -1), \
        None, noise
  if kind == "grey_shapes":
    return _dead_leaves(rng, size, grey=True), None, 0.0
  if kind == "sharp_edges":
    return _partition(rng, size, [_colour(rng) for _ in range(4)]), None, 0.0
  if kind == "soft_edges":
    img = _partition(rng, size, [_colour(rng) for _ in range(4)])
    return _blur(img, rng.uniform(1.0, 0.06 * size)), None, noise
  if kind == "object_on_clutter":
    mask = _object_mask(rng, size)
    img = _dead_leaves(rng, size)
    texture = _colour(rng) + rng.uniform(10, 40) * _pink_noise(rng, size, 3, power=1.5)
    img[mask] = texture[mask]
    return img, mask, noise
  if kind == "object_on_smooth":
    mask = _object_mask(rng, size)
    yy, _ = _coords(size)
    img = _mix(_colour(rng), _colour(rng), yy / size)  # a sky-like gradient
    img[mask] = _dead_leaves(rng, size, count=15, max_radius=0.08)[mask]
    return _blur(img, rng.uniform(0.0, 1.5)), mask, max(noise, 6.0)
  if kind == "saturated":
    mask = _object_mask(rng, size)
    img = 128 + 200 * _pink_noise(rng, size, 1, power=2.5).repeat(3, -1)
    img[mask] = rng.choice([0.0, 255.0])
    return img, mask, noise
  if kind == "grating_object_on_noise":
    mask = _object_mask(rng, size)
    img = rng.uniform(60, 200, 3) + 40 * _pink_noise(rng, size, 3)
    img[mask] = _grating(rng, size, square=rng.random() < 0.5)[mask]
    return img, mask, noise
  if kind == "grey_object_on_grating":
    mask = _object_mask(rng, size)
    img = _grating(rng, size, grey=True)
    img[mask] = _dead_leaves(rng, size, grey=True, max_radius=0.1)[mask]
    return img, mask, noise
  raise ValueError(f"unknown kind {kind!r}")


def natural_image(kind, size, seed=0):
  """(image (H,W,3) of 8-bit integers as float64, object mask (H,W) bool)."""
  rng = np.random.default_rng([seed, KINDS.index(kind), size])
  img, mask, noise = _image(kind, rng, size)
  img = img + rng.normal(0, noise, img.shape) if noise else img
  if mask is None:
    mask = _object_mask(rng, size)
  return np.clip(np.round(img), 0, 255), mask


def smooth_logits(size, seed=0):
  """Two-class logits: a smooth random field (confident and uncertain areas), (H,W,2)."""
  rng = np.random.default_rng([seed, 1000, size])
  field = rng.uniform(1.5, 5.0) * _pink_noise(rng, size, 1, power=4.0)[..., 0]
  return np.stack([0.5 * field, -0.5 * field], -1)


def object_logits(mask, seed=0):
  """Two-class logits that follow an object region, blurred and perturbed, (H,W,2)."""
  size = mask.shape[0]
  rng = np.random.default_rng([seed, 2000, size])
  soft = _blur(mask.astype(np.float64), rng.uniform(0.5, 0.05 * size))
  fg = rng.uniform(2.0, 6.0) * (2 * soft - 1) + 1.2 * _pink_noise(rng, size, 1)[..., 0]
  return np.stack([-0.5 * fg, 0.5 * fg], -1)


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def natural_set(size, seed=0, kinds=KINDS):
  """(names, images (N,H,W,3), logits (N,H,W,2)): every kind with both logit fields."""
  names, images, logits = [], [], []
  for kind in kinds:
    image, mask = natural_image(kind, size, seed)
    key = seed * len(KINDS) + KINDS.index(kind)
    for name, z in (("smooth", smooth_logits(size, key)), ("object", object_logits(mask, key))):
      names.append(f"{kind}/{name}")
      images.append(image)
      logits.append(z)
  return names, np.stack(images), np.stack(logits)
