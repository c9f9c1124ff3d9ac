"""The dense CRF loss (docs/design.md §6) against the exact O(N^2) sum in numpy float64."""

import importlib.util
import os

import cv2
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax.losses import crf

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _natural_images():
  """benchmarks/natural_images.py (the accuracy benchmark's generator), as a module."""
  spec = importlib.util.spec_from_file_location(
      "natural_images", os.path.join(_REPO, "benchmarks", "natural_images.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def synthetic_image(h, w, seed=0, noise=6.0):
  """A photo-like RGB image in 0..255: smooth shading, flat shapes with edges, noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  img = np.zeros((h, w, 3))
  for c in range(3):
    a, b, d = rng.uniform(-1, 1, 3)
    img[..., c] = 128 + 60 * (a * xx + b * yy) + 30 * np.sin(2 * np.pi * (d * xx + 0.7 * yy))
  for _ in range(6):
    cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
    if rng.random() < 0.5:
      inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    else:
      inside = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < 0.6 * r)
    img[inside] = rng.uniform(0, 255, 3) + 20 * (xx[inside, None] - cx)
  img += rng.normal(0, noise, img.shape)
  return np.clip(np.round(img), 0, 255)


def synthetic_probs(image, seed=0, k=2):
  """Softmax probabilities that follow the image partly (as a decoder's would)."""
  rng = np.random.default_rng(seed + 100)
  h, w, _ = image.shape
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  logits = np.stack([3 * np.sin(5 * xx + 2 + j) * np.cos(4 * yy - j)
                     + (image[..., j % 3] - 128) / 40 for j in range(k)], -1)
  logits += rng.normal(0, 0.5, logits.shape)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def exact_filter(values, image, sigma_xy, sigma_rgb, chunk=1024):
  """W v with the exact kernel, float64: values (H,W,K), image (H,W,3)."""
  h, w, k = values.shape
  yy, xx = np.mgrid[0:h, 0:w]
  f = np.concatenate([np.stack([xx, yy], -1) / sigma_xy, image / sigma_rgb], -1)
  f = f.reshape(-1, 5).astype(np.float64)
  sq = np.sum(f * f, 1)
  v = values.reshape(-1, k).astype(np.float64)
  out = np.empty_like(v)
  for start in range(0, len(f), chunk):
    rows = slice(start, start + chunk)
    d2 = sq[rows, None] + sq[None, :] - 2 * f[rows] @ f.T
    out[rows] = np.exp(-0.5 * np.maximum(d2, 0.0)) @ v
  return out.reshape(h, w, k)


def exact_loss_and_grad(probs, images, sigma_xy, sigma_rgb):
  """(-(1/B) sum_b sum_k S^T W S, its gradient -(2/B) W S), float64."""
  ws = np.stack([exact_filter(p, i, sigma_xy, sigma_rgb) for p, i in zip(probs, images)])
  b = len(probs)
  return -(probs * ws).sum() / b, -2.0 / b * ws


def cosine(a, b):
  a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def batch(h, w, n=2, k=2, seed=0):
  images = np.stack([synthetic_image(h, w, seed + i) for i in range(n)])
  probs = np.stack([synthetic_probs(im, seed + i, k) for i, im in enumerate(images)])
  return probs, images


def loss_and_grad(probs, images, **kwargs):
  fn = jax.jit(jax.value_and_grad(lambda p, i: crf.dense_crf_loss(p, i, **kwargs)))
  loss, grad = fn(jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32))
  return float(loss), np.asarray(grad)


def rel_error(a, b):
  """|a - b| / |b| over all entries: a gradient's error in scale as well as direction."""
  a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def data64():
  return batch(64, 64, n=2)


# Tolerances below: the worst value measured with this code on these deterministic
# inputs, plus a margin of about half of it (1.5x the loss error, the gradient's relative
# error and 1 - cosine), for float reordering across XLA versions and backends; a
# gradient off in scale (halved, doubled) or a kernel off by a few percent fails them.


def test_defaults_match_exact_kernel(data64):
  """Default settings (grid_cell 0.5) on 64x64 photo-like images: loss and gradient
  against the exact float64 sum; measured -0.08 % / 1.11 % / 0.99994."""
  probs, images = data64
  ref_loss, ref_grad = exact_loss_and_grad(probs, images, 100.0, 15.0)
  loss, grad = loss_and_grad(probs, images)
  assert crf._plan(probs.shape, 100., 15., 0.5, "auto").method == "grid"
  assert abs(loss / ref_loss - 1) < 0.0012
  assert rel_error(grad, ref_grad) < 0.017
  assert cosine(grad, ref_grad) > 0.99991


@pytest.mark.parametrize("sigma_xy,sigma_rgb,cell,loss_tol,grad_tol", [
    (100.0, 30.0, 1.0, 0.004, 0.06),   # measured -0.26 %, 3.97 %
    (100.0, 5.0, 1.0, 0.0086, 0.118),  # many colour nodes: -0.57 %, 7.85 %
    (50.0, 15.0, 0.75, 0.001, 0.043),  # +0.05 %, 2.83 %
])
def test_grid_matches_exact_kernel(data64, sigma_xy, sigma_rgb, cell, loss_tol, grad_tol):
  """The loss, and the gradient in scale (relative error of the whole gradient), against
  the exact float64 sum."""
  probs, images = data64
  probs, images = probs[:1], images[:1]
  ref_loss, ref_grad = exact_loss_and_grad(probs, images, sigma_xy, sigma_rgb)
  loss, grad = loss_and_grad(probs, images, sigma_xy=sigma_xy, sigma_rgb=sigma_rgb,
                             grid_cell=cell, method="grid")
  assert abs(loss / ref_loss - 1) < loss_tol
  assert rel_error(grad, ref_grad) < grad_tol


@pytest.mark.parametrize("cell,loss_tol,cos_tol", [
    (0.5, 0.0071, 0.9993),  # measured: 0.47 % (saturated), 0.99952 (colour noise)
    (1.0, 0.031, 0.9916),   # 2.04 % (saturated), 0.99438 (colour noise)
])
def test_grid_on_natural_images(cell, loss_tol, cos_tol):
  """64x64 natural-looking images (saturated, flat grey shapes, colour noise, soft edges,
  gratings, an object on clutter), each with a smooth random and an object-like logit
  field, default sigmas (sigma_xy scaled to the size): the loss, and the gradient with
  respect to the logits (through the softmax, where the training signal is), against the
  exact float64 sum, worst image."""
  ni = _natural_images()
  size, sigma_xy = 64, 100.0 * 64 / 224
  kinds = ("saturated", "grey_shapes", "colour_noise", "soft_edges", "grating",
           "object_on_clutter")
  _, images, logits = ni.natural_set(size, 0, kinds=kinds)
  probs = ni.softmax(logits)
  ws = np.stack([exact_filter(p, i, sigma_xy, 15.0) for p, i in zip(probs, images)])
  ref_loss = -np.sum(probs * ws, (1, 2, 3))
  ref_grad = probs * (-2 * ws + 2 * np.sum(probs * ws, -1, keepdims=True))
  fn = jax.jit(jax.vmap(jax.value_and_grad(lambda z, i: crf.dense_crf_loss(
      jax.nn.softmax(z)[None], i[None], sigma_xy=sigma_xy, grid_cell=cell))))
  loss, grad = fn(jnp.asarray(logits, jnp.float32), jnp.asarray(images, jnp.float32))
  loss, grad = np.asarray(loss, np.float64), np.asarray(grad, np.float64)
  assert np.max(np.abs(loss / ref_loss - 1)) < loss_tol
  assert min(cosine(g, r) for g, r in zip(grad, ref_grad)) > cos_tol


def test_grid_on_flat_noise_free_image():
  """Large flat regions: every pixel of a region sits at the same place between colour
  nodes, so nothing averages out; measured -0.01 % / +0.02 %, gradient relative error
  0.02 % / 0.04 % at grid_cell 0.5 / 1.0 (+6.4 % loss error at 1.0 with the nearest
  splat and no self-kernel normalisation)."""
  h = w = 48
  yy, xx = np.mgrid[0:h, 0:w] / h
  image = np.zeros((h, w, 3)) + [40, 90, 200]
  image[yy > 0.6] = [60, 140, 50]
  image[(yy - 0.45) ** 2 + (xx - 0.5) ** 2 < 0.05] = [190, 170, 20]
  probs = synthetic_probs(image)
  ref_loss, ref_grad = exact_loss_and_grad(probs[None], image[None], 100.0, 15.0)
  for cell in (0.5, 1.0):
    loss, grad = loss_and_grad(probs[None], image[None], method="grid", grid_cell=cell)
    assert abs(loss / ref_loss - 1) < 0.0005, cell
    assert rel_error(grad, ref_grad) < 0.001, cell


def test_custom_vjp_matches_finite_differences_of_the_grid_loss():
  """The custom VJP, -(2/B) W S with the grid's approximate W, against central finite
  differences of the grid's own loss along 32 random directions (exact for a quadratic
  form, up to float rounding), 12x12 image. W is symmetric only on average over the
  dithered splat (its antisymmetric part is noise), so they agree to a few percent and
  in scale; measured relative error 0.7 % / 4.8 % and scale 1.000 / 0.993 at grid_cell
  0.5 / 1.0 (a halved gradient: 50 % and 0.5)."""
  ni = _natural_images()
  image, mask = ni.natural_image("object_on_clutter", 12, seed=1)
  probs = jnp.asarray(ni.softmax(ni.object_logits(mask, 1))[None], jnp.float32)
  image = jnp.asarray(image[None], jnp.float32)
  dirs = np.random.default_rng(0).normal(size=(32,) + probs.shape).astype(np.float32)
  for cell in (0.5, 1.0):
    kwargs = dict(sigma_xy=6.0, sigma_rgb=15.0, grid_cell=cell, method="grid")
    vjp = np.asarray(jax.grad(lambda p: crf.dense_crf_loss(p, image, **kwargs))(probs))
    eps = 0.1
    losses = jax.jit(jax.vmap(lambda x: crf.dense_crf_loss(probs + x, image, **kwargs)))
    fd = (np.asarray(losses(eps * dirs), np.float64)
          - np.asarray(losses(-eps * dirs), np.float64)) / (2 * eps)
    along = np.einsum("nbhwk,bhwk->n", dirs, vjp.astype(np.float64))
    assert abs(np.sum(along * fd) / np.sum(fd * fd) - 1) < 0.011, cell
    assert rel_error(along, fd) < 0.072, cell


@pytest.mark.parametrize("sigma_xy,sigma_rgb", [(5.0, 5.0), (100.0, 15.0)])
def test_direct_is_exact(sigma_xy, sigma_rgb):
  probs, images = batch(24, 20, n=2, k=3, seed=5)  # non-square, three classes
  ref_loss, ref_grad = exact_loss_and_grad(probs, images, sigma_xy, sigma_rgb)
  loss, grad = loss_and_grad(probs, images, sigma_xy=sigma_xy, sigma_rgb=sigma_rgb,
                             method="direct")
  # sigma_xy = 5 truncates the window at 4 sigma (weights < e^-8).
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-4)
  np.testing.assert_allclose(grad, ref_grad, rtol=2e-4, atol=1e-3 * np.abs(ref_grad).max())


def test_custom_vjp_matches_autodiff_of_dense_kernel():
  """-(2/B) W S is the gradient of the loss: jax.grad of the explicit N x N form."""
  probs, images = batch(6, 5, n=2, k=3, seed=9)
  p = jnp.asarray(probs, jnp.float32)

  def dense(p):
    b, h, w, k = p.shape
    yy, xx = np.mgrid[0:h, 0:w]
    pos = np.stack([xx, yy], -1).reshape(-1, 2) / 7.0
    col = images.reshape(b, -1, 3) / 20.0
    d2 = (((pos[:, None] - pos[None]) ** 2).sum(-1)[None]
          + ((col[:, :, None] - col[:, None]) ** 2).sum(-1))
    wmat = jnp.asarray(np.exp(-0.5 * d2), jnp.float32)
    s = p.reshape(b, -1, k)
    return -jnp.einsum("bik,bij,bjk->", s, wmat, s) / b

  expected = jax.grad(dense)(p)
  got = jax.grad(lambda p: crf.dense_crf_loss(p, images, sigma_xy=7.0, sigma_rgb=20.0,
                                              method="direct"))(p)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  got_grid = jax.grad(lambda p: crf.dense_crf_loss(p, images, sigma_xy=7.0, sigma_rgb=20.0,
                                                   method="grid"))(p)
  assert cosine(got_grid, expected) > 0.99


def test_batch_is_a_mean_over_images_and_images_get_no_gradient(data64):
  probs, images = data64
  loss = jax.jit(crf.dense_crf_loss)
  both = float(loss(probs, images))
  each = [float(loss(probs[i:i + 1], images[i:i + 1])) for i in range(2)]
  np.testing.assert_allclose(both, np.mean(each), rtol=1e-5)
  g_images = jax.grad(lambda i: crf.dense_crf_loss(probs, i), argnums=0)(
      jnp.asarray(images, jnp.float32))
  assert not np.any(np.asarray(g_images))


def _cv2_linear_map(size, out):
  """(out, size) matrix of cv2.resize INTER_LINEAR on a 1-D signal (its impulse responses)."""
  eye = np.eye(size, dtype=np.float32)
  return np.stack([cv2.resize(eye[:, i:i + 1], (1, out), interpolation=cv2.INTER_LINEAR)[:, 0]
                   for i in range(size)], 1).astype(np.float64)


def test_scale_half_resizes_like_torch():
  """scale=0.5: probs bilinear (half-pixel), image nearest, sigma_xy halved; cv2.resize
  follows the same rules for a factor of 2."""
  probs, images = batch(40, 36, n=1, seed=3)
  h, w = 20, 18
  small_img = np.stack([cv2.resize(images[0].astype(np.float32), (w, h),
                                   interpolation=cv2.INTER_NEAREST)])
  my, mx = _cv2_linear_map(40, h), _cv2_linear_map(36, w)
  small_probs = np.einsum("Hh,Ww,bhwk->bHWk", my, mx, probs)
  ref_loss, ref_small_grad = exact_loss_and_grad(small_probs, small_img, 50.0, 15.0)
  ref_grad = np.einsum("Hh,Ww,bHWk->bhwk", my, mx, ref_small_grad)  # adjoint of the resize
  loss, grad = loss_and_grad(probs, images, sigma_xy=100.0, scale=0.5, method="direct")
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-4 * np.abs(ref_grad).max())


def test_auto_method_and_argument_checks():
  assert crf._plan((32, 224, 224, 2), 100., 15., 0.5, "auto").method == "grid"
  assert crf._plan((2, 64, 64, 2), 5., 5., 0.5, "auto").method == "direct"
  assert crf.default_batch_chunk("cpu") == 4
  assert crf.default_batch_chunk("gpu") == crf.default_batch_chunk("tpu") == 0
  plan = crf._plan((8, 16, 16, 2), 100., 15., 0.5, "grid", -1)
  assert plan.chunk == crf.default_batch_chunk(jax.default_backend())
  with pytest.raises(ValueError, match="method"):
    crf.dense_crf_loss(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 3)), method="lattice")
  with pytest.raises(ValueError, match="scale"):
    crf.dense_crf_loss(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 3)), scale=1.5)


def test_full_size_batch_memory():
  """Batch 32 at 224x224 (loss + gradient, default sigmas, grid_cell 1.0 and 0.5) compiles
  to < 4 GB of temporaries."""
  probs = jax.ShapeDtypeStruct((32, 224, 224, 2), jnp.float32)
  images = jax.ShapeDtypeStruct((32, 224, 224, 3), jnp.float32)
  for cell in (1.0, 0.5):
    fn = jax.jit(jax.value_and_grad(lambda p, i: crf.dense_crf_loss(p, i, grid_cell=cell)))
    stats = fn.lower(probs, images).compile().memory_analysis()
    if stats is None:
      pytest.skip("no memory analysis on this backend")
    assert stats.temp_size_in_bytes < 4 * 2 ** 30, (cell, stats.temp_size_in_bytes)


@pytest.mark.parametrize("chunk", [0, 1, 2, 3])
def test_batch_chunks_give_the_same_filter(chunk):
  """Filtering a batch of 5 in chunks (padded when 5 is not a multiple) = all at once."""
  probs, images = batch(24, 20, n=5)
  args = jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32)
  whole = crf.bilateral_filter(*args, sigma_xy=30., grid_cell=1.0, method="grid", batch_chunk=0)
  chunked = crf.bilateral_filter(*args, sigma_xy=30., grid_cell=1.0, method="grid",
                                 batch_chunk=chunk)
  assert chunked.shape == whole.shape
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="batch_chunk"):
    crf.bilateral_filter(*args, batch_chunk=-2)


@pytest.mark.parametrize("h,w,sigma,cell,modes,rms,peak", [
    (224, 224, 100.0, 0.5, 13, 6e-4, 0.018),  # measured rms 4.1e-4, max 0.0117
    (40, 30, 12.0, 1.0, 14, 3e-3, 0.062),     # 2.0e-3, 0.041
])
def test_spatial_modes_reproduce_the_spatial_kernel(h, w, sigma, cell, modes, rms, peak):
  """U U^T against the exact spatial Gaussian on the pixel grid (a sample of rows): the
  eigenpairs kept to 4e-3 grid_cell^2 of the largest; rows' masses kept to 1e-4."""
  u = crf._space_modes(h, w, sigma, cell)
  assert u.shape == (h * w, modes)
  yy, xx = np.mgrid[0:h, 0:w]
  p = np.stack([yy.ravel(), xx.ravel()], -1) / sigma
  rows = np.arange(0, h * w, 97)
  exact = np.exp(-0.5 * ((p[rows, None] - p[None]) ** 2).sum(-1))
  err = u[rows] @ u.T - exact
  assert np.sqrt(np.mean(err ** 2)) < rms
  assert np.abs(err).max() < peak
  assert np.abs(err.sum(1) / exact.sum(1)).max() < 1e-4


def test_precision_is_explicit_and_changes_nothing_on_cpu(monkeypatch):
  """The matrix products run at HIGHEST (full fp32 on a GPU or TPU too); on a CPU, where
  fp32 is the only mode, DEFAULT gives the same filter."""
  assert crf._PRECISION == lax.Precision.HIGHEST
  probs, images = batch(24, 20, n=2)
  args = jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32)
  kwargs = dict(sigma_xy=30., grid_cell=0.5, method="grid")
  highest = np.asarray(crf.bilateral_filter(*args, **kwargs))
  monkeypatch.setattr(crf, "_PRECISION", lax.Precision.DEFAULT)
  default = np.asarray(crf.bilateral_filter(*args, **kwargs))
  if jax.default_backend() == "cpu":
    np.testing.assert_allclose(default, highest, rtol=1e-6, atol=1e-6 * np.abs(highest).max())
