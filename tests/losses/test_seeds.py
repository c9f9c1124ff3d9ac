"""Seed sampling and the partial cross-entropy (docs/design.md §6) against numpy / OpenCV."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import losses


def blob_cams(n, h=36, w=44, seed=0, relu=False):
  """Min-max normalized CAM-like maps: a few Gaussian blobs (optionally ReLU'd: ties at 0)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  cams = []
  for _ in range(n):
    cam = sum(rng.uniform(0.3, 1) * np.exp(-((yy - rng.uniform(0, 1)) ** 2
                                             + (xx - rng.uniform(0, 1)) ** 2)
                                           / rng.uniform(0.005, 0.05)) for _ in range(3))
    cam = cam + 0.05 * rng.normal(size=cam.shape)
    if relu:
      cam = np.maximum(cam - np.median(cam), 0)
    cams.append((cam - cam.min()) / (cam.max() - cam.min()))
  return np.stack(cams).astype(np.float32)


def ref_otsu(q):
  """Otsu over the 256 levels, float64; the first (lowest) level among equal maxima."""
  hist = np.bincount(q.ravel(), minlength=256).astype(np.float64)
  levels = np.arange(256)
  best, best_t = -1.0, 0
  for t in range(256):
    w1, w2 = hist[:t + 1].sum(), hist[t + 1:].sum()
    if w1 == 0 or w2 == 0:
      continue
    m1 = (hist[:t + 1] * levels[:t + 1]).sum() / w1
    m2 = (hist[t + 1:] * levels[t + 1:]).sum() / w2
    var = w1 * w2 * (m1 - m2) ** 2
    if var > best:
      best, best_t = var, t
  return best_t


def ref_regions(cam, n_minus=0.1, erosion=11):
  """docs/design.md §6 regions with numpy + OpenCV (cv2.erode's default border never erodes)."""
  h, w = cam.shape
  q = (cam * np.float32(255)).astype(np.uint8)
  if q.min() == q.max():
    return np.zeros((h, w), bool), np.zeros((h, w), bool)
  fg = (q > min(max(ref_otsu(q), 1), 254)).astype(np.uint8)
  eroded = cv2.erode(fg, np.ones((erosion, erosion), np.uint8))
  fg = eroded if eroded.any() else fg
  bg = np.zeros(h * w, bool)
  bg[np.argsort(cam.ravel(), kind="stable")[:int(n_minus * h * w)]] = True
  return fg.astype(bool), bg.reshape(h, w)


def test_otsu_matches_reference_and_opencv():
  cams = blob_cams(6, seed=1)
  for cam in cams:
    q = (cam * np.float32(255)).astype(np.uint8)
    t = int(losses.otsu_threshold(jnp.asarray(q, jnp.int32)))
    assert t == ref_otsu(q)
    t_cv, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert t == int(t_cv)
  # Two levels: every t in [0, 254] splits alike; the first wins (then clamped to 1).
  q = np.zeros((8, 8), np.int32)
  q[:, 4:] = 255
  assert int(losses.otsu_threshold(jnp.asarray(q))) == 0


@pytest.mark.parametrize("relu", [False, True])
def test_regions_match_reference(relu):
  cams = blob_cams(5, seed=2, relu=relu)
  fg, bg = jax.jit(losses.seed_regions)(jnp.asarray(cams))
  for i, cam in enumerate(cams):
    ref_fg, ref_bg = ref_regions(cam)
    np.testing.assert_array_equal(np.asarray(fg[i]), ref_fg)
    np.testing.assert_array_equal(np.asarray(bg[i]), ref_bg)


def test_regions_edge_cases():
  h, w = 30, 32
  yy, xx = np.mgrid[0:h, 0:w]
  cams = np.zeros((4, h, w), np.float32)
  cams[0, :, :12] = 1.0                  # touches the border: only the inner side erodes
  cams[1, 10:13, :] = 1.0                # 3 rows: an 11x11 erosion empties it -> uneroded
  cams[2] = 0.5                          # constant
  cams[3] = 0.002 * (xx + yy) / (h + w)  # not constant, but q = uint8(cam * 255) is
  fg, bg = jax.jit(losses.seed_regions)(jnp.asarray(cams))
  fg, bg = np.asarray(fg), np.asarray(bg)
  expected = np.zeros((h, w), bool)
  expected[:, :7] = True
  np.testing.assert_array_equal(fg[0], expected)
  np.testing.assert_array_equal(fg[1], cams[1] > 0)
  assert not fg[2:].any() and not bg[2:].any()
  for i in range(2):
    ref_fg, ref_bg = ref_regions(cams[i])
    np.testing.assert_array_equal(fg[i], ref_fg)
    np.testing.assert_array_equal(bg[i], ref_bg)
  # Ties (all the zeros of cams[0]) go in raster order: rows 0-3 and 16 pixels of row 4.
  expected = np.zeros((h, w), bool)
  expected[:4, 12:] = True
  expected[4, 12:28] = True
  np.testing.assert_array_equal(bg[0], expected)
  seeds = jax.jit(losses.sample_seeds)(jnp.asarray(cams[2:]), jax.random.PRNGKey(0))
  assert (np.asarray(seeds) == losses.IGNORE).all()


def test_samples_lie_in_regions_and_dilate_like_opencv():
  cams = jnp.asarray(blob_cams(6, seed=3))
  key = jax.random.PRNGKey(7)
  fg_region, bg_region = map(np.asarray, jax.jit(losses.seed_regions)(cams))
  points = np.asarray(jax.jit(lambda c, k: losses.sample_seeds(c, k, sl_max=3, sl_min=2,
                                                               dilation=1))(cams, key))
  seeds = np.asarray(jax.jit(lambda c, k: losses.sample_seeds(c, k, sl_max=3, sl_min=2))(
      jnp.asarray(cams), key))
  assert seeds.dtype == np.int32 and seeds.shape == cams.shape
  for i in range(len(cams)):
    fg_pts, bg_pts = points[i] == losses.FOREGROUND, points[i] == losses.BACKGROUND
    assert fg_pts.sum() == 3 and bg_pts.sum() == 2
    assert fg_region[i][fg_pts].all() and bg_region[i][bg_pts].all()
    assert not (fg_region[i] & bg_region[i]).any()
    kernel = np.ones((3, 3), np.uint8)
    fg_d = cv2.dilate(fg_pts.astype(np.uint8), kernel).astype(bool)
    bg_d = cv2.dilate(bg_pts.astype(np.uint8), kernel).astype(bool)
    expected = np.full(fg_pts.shape, losses.IGNORE)
    expected[fg_d & ~bg_d] = losses.FOREGROUND
    expected[bg_d & ~fg_d] = losses.BACKGROUND
    np.testing.assert_array_equal(seeds[i], expected)


def test_overlapping_dilations_are_ignored():
  # Background region = the 2 lowest pixels, right beside the foreground region.
  cam = np.ones((12, 12), np.float32) * 0.5
  cam[5, 5:7] = 0.0
  cam[4:8, 7:] = 1.0
  sample = jax.jit(lambda c, k: losses.sample_seeds(c, k, n_minus=2.5 / 144, erosion=1,
                                                    sl_max=100, sl_min=5))
  seeds = np.asarray(sample(cam[None], jax.random.PRNGKey(0)))
  # Dilated foreground: rows 3-8, cols 6-11; dilated background: rows 4-6, cols 4-7.
  assert seeds[0][5, 5] == losses.BACKGROUND
  assert (seeds[0][4:7, 6:8] == losses.IGNORE).all()
  assert (seeds[0][3:9, 8:] == losses.FOREGROUND).all()
  assert (seeds[0][4:7, 4:6] == losses.BACKGROUND).all()


def test_sampling_is_uniform_and_differs_across_images():
  cam = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)  # bg = 4 lowest pixels
  cams = jnp.asarray(np.repeat(cam[None], 800, 0))
  sample = jax.jit(lambda c, k, n: losses.sample_seeds(c, k, n_minus=4 / 64, sl_max=0,
                                                       sl_min=n, dilation=1),
                   static_argnums=2)
  seeds = np.asarray(sample(cams, jax.random.PRNGKey(3), 1))
  picked = (seeds == losses.BACKGROUND).reshape(800, 64)
  assert (picked.sum(1) == 1).all()
  counts = picked.sum(0)
  assert counts[4:].sum() == 0
  assert (np.abs(counts[:4] - 200) < 60).all(), counts[:4]  # ~5 binomial std
  # More requested than available: the whole region.
  seeds = np.asarray(sample(cams[:1], jax.random.PRNGKey(3), 10))
  assert (seeds[0].ravel()[:4] == losses.BACKGROUND).all() and (seeds[0].ravel()[4:] == -1).all()


def test_partial_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 6, 2)).astype(np.float32)
  seeds = rng.integers(-1, 2, size=(3, 5, 6)).astype(np.int32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  mask = seeds >= 0
  expected = -np.take_along_axis(logp, np.maximum(seeds, 0)[..., None], -1)[..., 0][mask].mean()
  got = jax.jit(losses.partial_cross_entropy)(logits, seeds)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  none = jnp.full((3, 5, 6), losses.IGNORE, jnp.int32)
  value, grad = jax.jit(jax.value_and_grad(losses.partial_cross_entropy))(logits, none)
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_per_image_keys_make_seeds_independent_of_the_batch_split():
  rng = np.random.default_rng(5)
  cams = jnp.asarray(rng.random((4, 24, 24)), jnp.float32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(4))
  whole = losses.sample_seeds(cams, keys, erosion=3)
  halves = [losses.sample_seeds(cams[i:i + 2], keys[i:i + 2], erosion=3) for i in (0, 2)]
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  assert (np.asarray(whole) == losses.FOREGROUND).any(axis=(1, 2)).all()


def test_partial_cross_entropy_over_devices_is_the_global_mean():
  """vmap with an axis name stands in for pmap: the mean of the per-device values equals
  the single-device loss on the whole batch, even with unequal labelled counts."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(8, 6, 6, 2)), jnp.float32)
  seeds = rng.choice([-1, -1, -1, 0, 1], size=(8, 6, 6))
  seeds[0:2] = -1  # device 0 has no labelled pixel at all
  seeds = jnp.asarray(seeds, jnp.int32)
  whole = losses.partial_cross_entropy(logits, seeds)
  per_device = jax.vmap(lambda l, s: losses.partial_cross_entropy(l, s, axis_name="d"),
                        axis_name="d")(logits.reshape(4, 2, 6, 6, 2), seeds.reshape(4, 2, 6, 6))
  # Measured 2.7e-7 apart (another summation order); 10x, rounded up (tests/README.md).
  np.testing.assert_allclose(float(jnp.mean(per_device)), float(whole), rtol=5e-6)
  per_device_local = jax.vmap(losses.partial_cross_entropy)(logits.reshape(4, 2, 6, 6, 2),
                                                            seeds.reshape(4, 2, 6, 6))
  assert abs(float(jnp.mean(per_device_local)) - float(whole)) > 1e-3  # the naive mean differs
