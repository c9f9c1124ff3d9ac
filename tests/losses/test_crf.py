"""The dense CRF loss (SPEC §6) against the exact O(N^2) sum in numpy float64."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax.losses import crf


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
  v = values.reshape(-1, k).astype(np.float64)
  out = np.empty_like(v)
  for start in range(0, len(f), chunk):
    d2 = ((f[start:start + chunk, None, :] - f[None, :, :]) ** 2).sum(-1)
    out[start:start + chunk] = np.exp(-0.5 * d2) @ v
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


@pytest.fixture(scope="module")
def data64():
  return batch(64, 64, n=2)


def test_defaults_match_exact_kernel(data64):
  probs, images = data64
  ref_loss, ref_grad = exact_loss_and_grad(probs, images, 100.0, 15.0)
  loss, grad = loss_and_grad(probs, images)
  assert crf._plan(probs.shape, 100., 15., 0.5, "auto").method == "grid"
  assert abs(loss / ref_loss - 1) < 0.05
  assert cosine(grad, ref_grad) > 0.99


@pytest.mark.parametrize("sigma_xy,sigma_rgb,cell", [
    (100.0, 30.0, 1.0),  # coarsest grid
    (100.0, 5.0, 1.0),   # many colour nodes
    (50.0, 15.0, 0.75),
])
def test_grid_matches_exact_kernel(data64, sigma_xy, sigma_rgb, cell):
  probs, images = data64
  probs, images = probs[:1], images[:1]
  ref_loss, ref_grad = exact_loss_and_grad(probs, images, sigma_xy, sigma_rgb)
  loss, grad = loss_and_grad(probs, images, sigma_xy=sigma_xy, sigma_rgb=sigma_rgb,
                             grid_cell=cell, method="grid")
  assert abs(loss / ref_loss - 1) < 0.05
  assert cosine(grad, ref_grad) > 0.99


def test_grid_on_flat_noise_free_image():
  """Large flat regions: the nearest-node rounding no longer averages out."""
  h = w = 48
  yy, xx = np.mgrid[0:h, 0:w] / h
  image = np.zeros((h, w, 3)) + [40, 90, 200]
  image[yy > 0.6] = [60, 140, 50]
  image[(yy - 0.45) ** 2 + (xx - 0.5) ** 2 < 0.05] = [190, 170, 20]
  probs = synthetic_probs(image)
  ref_loss, ref_grad = exact_loss_and_grad(probs[None], image[None], 100.0, 15.0)
  loss, grad = loss_and_grad(probs[None], image[None], method="grid")
  assert abs(loss / ref_loss - 1) < 0.05
  assert cosine(grad, ref_grad) > 0.99


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
  both = float(crf.dense_crf_loss(probs, images))
  each = [float(crf.dense_crf_loss(probs[i:i + 1], images[i:i + 1])) for i in range(2)]
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
    crf.bilateral_filter(*args, batch_chunk=-1)


def test_spatial_modes_match_the_spatial_nodes(monkeypatch):
  """The colour blur on the spatial operator's leading modes (kept to 1e-3 of its norm)
  gives the filter of the full node grid to about that accuracy."""
  probs, images = batch(48, 48, n=2)
  args = jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32)
  kwargs = dict(sigma_xy=10., sigma_rgb=30., grid_cell=0.5, method="grid")
  c = crf._grid_consts(48, 48, 10., 30., 0.5)
  assert c.space_in is not None and c.space.shape[1] < 0.75 * c.nodes, c.space.shape
  modes = np.asarray(crf.bilateral_filter(*args, **kwargs))
  monkeypatch.setattr(crf, "_SPACE_RTOL", 0.0)
  crf._grid_consts.cache_clear()
  try:
    assert crf._grid_consts(48, 48, 10., 30., 0.5).space_in is None
    nodes = np.asarray(crf.bilateral_filter(*args, **kwargs))
  finally:
    crf._grid_consts.cache_clear()
  assert np.abs(modes - nodes).max() < 1e-3 * np.abs(nodes).max()
  assert cosine(modes, nodes) > 0.999999
