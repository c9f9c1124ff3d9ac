"""The stage-2 loss term by term (docs/design.md §6), value and gradient w.r.t. the LOGITS.

The reference is written here in numpy float64, from the formulas, not from the code:

  S = softmax(logits) over the 2 channels (0 background, 1 foreground, docs/design.md §5)
  seeds: mean over the labelled pixels of the batch of -log S[label]
  CRF:   -(1/B) sum_b sum_k S_bk^T W_b S_bk, W over ALL pixel pairs (i = j included)
  size:  0.5 (mean_b psi_t(-sum S_b,bg) + mean_b psi_t(-sum S_b,fg))
  L = w_seeds seeds + w_crf CRF + w_size size

Gradients are derived by hand (dL/dS, then through the softmax) and that derivation is
itself checked against central finite differences in float64. The images are tiny
(7x6 pixels, sigma_xy = 100): the CRF filters exactly there (its windowed 'direct'
method covers the whole image), so it is compared tightly; a larger image, where the
bilateral grid approximates W S, is compared loosely.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import config_lib
from fcam_jax import losses

TERMS = ("seeds", "crf", "size")
SIGMA_XY, SIGMA_RGB = 100.0, 15.0  # docs/design.md §6 defaults (checked below)


# ------------------------------------------------------------- the float64 reference


def psi(z, t):
  """Extended log-barrier (Kervadec et al.), paper eq. / docs/design.md §6, float64."""
  z = np.asarray(z, np.float64)
  out = np.empty_like(z)
  log_branch = z <= -1.0 / t ** 2
  out[log_branch] = -np.log(-z[log_branch]) / t
  lin = ~log_branch
  out[lin] = t * z[lin] - np.log(1.0 / t ** 2) / t + 1.0 / t
  return out


def dpsi(z, t):
  """d psi_t / dz: 1 / (t (-z)) on the log branch, t on the linear branch."""
  z = np.asarray(z, np.float64)
  return np.where(z <= -1.0 / t ** 2, 1.0 / (t * -np.minimum(z, -1e-300)), t)


def softmax64(logits):
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def kernel64(image, sigma_xy=SIGMA_XY, sigma_rgb=SIGMA_RGB):
  """W (N, N) of one image (H,W,3): every pixel pair, the diagonal (i = j) included."""
  h, w, _ = image.shape
  yy, xx = np.mgrid[0:h, 0:w]
  pos = np.stack([yy, xx], -1).reshape(-1, 2).astype(np.float64)
  rgb = np.asarray(image, np.float64).reshape(-1, 3)
  d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
  d_rgb = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)
  return np.exp(-d_pos / (2 * sigma_xy ** 2) - d_rgb / (2 * sigma_rgb ** 2))


def seeds_term(logits, seeds):
  """(value, dL/dlogits): partial cross-entropy, mean over the batch's labelled pixels."""
  s = softmax64(logits)
  labelled = seeds >= 0
  n = labelled.sum()
  onehot = np.stack([seeds == 0, seeds == 1], -1).astype(np.float64)
  nll = -np.log(np.where(onehot > 0, s, 1.0)).sum(-1)
  value = nll[labelled].sum() / max(n, 1)
  grad = np.where(labelled[..., None], s - onehot, 0.0) / max(n, 1)
  return value, grad


def crf_term(logits, images):
  """(value, dL/dS) of -(1/B) sum_b sum_k S^T W S; dL/dS = -(2/B) W S (W symmetric)."""
  s = softmax64(logits)
  b, h, w, k = s.shape
  value, d_s = 0.0, np.empty_like(s)
  for i in range(b):
    flat = s[i].reshape(-1, k)
    ws = kernel64(images[i]) @ flat
    value += -(flat * ws).sum() / b
    d_s[i] = (-2.0 / b * ws).reshape(h, w, k)
  return value, d_s


def size_term(logits, t):
  """(value, dL/dS) of 0.5 (mean_b psi_t(-A_b,bg) + mean_b psi_t(-A_b,fg)), A = sum S."""
  s = softmax64(logits)
  b = s.shape[0]
  area = s.sum((1, 2))  # (B, 2)
  value = 0.5 * (psi(-area[:, 0], t).mean() + psi(-area[:, 1], t).mean())
  d_area = -0.5 / b * dpsi(-area, t)  # d value / d A_bk
  return value, np.broadcast_to(d_area[:, None, None, :], s.shape).copy()


def through_softmax(logits, d_s):
  """dL/dlogits from dL/dS: S * (g - sum_k g_k S_k) per pixel."""
  s = softmax64(logits)
  return s * (d_s - (d_s * s).sum(-1, keepdims=True))


def reference(logits, seeds, images, t, weights, enabled=TERMS):
  """(loss, {term: unweighted value}, dloss/dlogits), float64."""
  terms, grad, loss = {}, np.zeros(logits.shape), 0.0
  if "seeds" in enabled:
    terms["seeds"], g = seeds_term(logits, seeds)
    grad += weights["seeds"] * g
  if "crf" in enabled:
    terms["crf"], d_s = crf_term(logits, images)
    grad += weights["crf"] * through_softmax(logits, d_s)
  if "size" in enabled:
    terms["size"], d_s = size_term(logits, t)
    grad += weights["size"] * through_softmax(logits, d_s)
  for name, value in terms.items():
    loss += weights[name] * value
  return loss, terms, grad


# ----------------------------------------------------------------------------- inputs


def inputs(h=7, w=6, b=3, seed=0):
  """Logits, seeds, raw images. Image 1's foreground is almost empty (sum S_fg < 1/t^2
  for the t used), so the size term visits both branches of the barrier."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 1.5, size=(b, h, w, 2))
  logits[1, ..., 1] -= 8.0
  seeds = rng.choice([-1, -1, -1, 0, 1], size=(b, h, w))
  seeds[0, 0, 0], seeds[0, 0, 1] = 0, 1  # both labels present
  images = rng.integers(0, 256, size=(b, h, w, 3))
  images[:, : h // 2] = rng.integers(90, 110, size=(b, 1, 1, 3))  # a flat region: large W_ij
  return (logits.astype(np.float32), seeds.astype(np.int32), images.astype(np.float32))


def fcam_config(enabled=TERMS, **weights):
  config = config_lib.base_config().fcam
  for name in TERMS:
    config[name].enabled = name in enabled
  for name, weight in weights.items():
    config[name].weight = weight
  return config


def weights_of(config):
  return {name: float(config[name].weight) for name in TERMS}


def run(config, logits, seeds, images, t):
  """(loss, terms, dloss/dlogits) of fcam_jax's total_loss, t traced."""
  fn = jax.jit(jax.value_and_grad(
      lambda l, t: losses.total_loss(l, seeds, images, t, config), has_aux=True))
  (loss, terms), grad = fn(jnp.asarray(logits), jnp.float32(t))
  return float(loss), {k: float(v) for k, v in terms.items()}, np.asarray(grad, np.float64)


def assert_grad_close(got, want, rtol=2e-4, name=""):
  """Element-wise, with an absolute floor at rtol * the largest reference entry."""
  scale = np.max(np.abs(want))
  assert scale > 0, f"{name}: the reference gradient is zero: the test would prove nothing"
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=name)


# ------------------------------------------------------------------------------ tests


def test_config_defaults_are_the_papers():
  config = config_lib.base_config().fcam
  assert (config.crf.sigma_xy, config.crf.sigma_rgb) == (SIGMA_XY, SIGMA_RGB)
  assert config.crf.scale == 1.0
  assert config.seeds.weight == 1.0 and config.size.weight == 0.1  # lambda_asc
  assert all(config[name].enabled for name in TERMS)


def test_crf_default_weight_has_the_originals_effective_strength():
  """The paper's 2e-9 was tuned on the original lattice, whose W S is 0.46-0.69x the exact
  kernel's on natural images (benchmarks/README.md, 'kernel strength'): the default on
  the exact kernel must lie in 2e-9 x that range (docs/design.md §6.2)."""
  weight = config_lib.base_config().fcam.crf.weight
  assert 2e-9 * 0.46 <= weight <= 2e-9 * 0.69, weight


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_reference_gradient_matches_finite_differences(t):
  """The hand-derived reference gradient is itself right (central differences, float64)."""
  logits, seeds, images = inputs()
  logits = logits.astype(np.float64)
  weights = {"seeds": 1.0, "crf": 1e-3, "size": 0.5}
  for term in TERMS:
    loss = lambda l: reference(l, seeds, images, t, weights, enabled=(term,))[0]
    _, _, grad = reference(logits, seeds, images, t, weights, enabled=(term,))
    rng = np.random.default_rng(1)
    coords = [tuple(rng.integers(0, n) for n in logits.shape) for _ in range(12)]
    coords += [(1, 3, 2, 1), (0, 0, 1, 1)]  # image 1 (linear branch), a seed pixel
    for c in coords:
      eps = 1e-5
      plus, minus = logits.copy(), logits.copy()
      plus[c] += eps
      minus[c] -= eps
      fd = (loss(plus) - loss(minus)) / (2 * eps)
      assert abs(fd - grad[c]) <= 1e-6 * np.max(np.abs(grad)) + 1e-6 * abs(fd), (term, c)


def test_inputs_cover_both_branches_of_the_barrier():
  logits, _, _ = inputs()
  area = softmax64(logits).sum((1, 2))
  for t in (1.0, 2.0):
    z = -area.ravel()
    assert (z <= -1 / t ** 2).any() and (z > -1 / t ** 2).any(), (t, z)


@pytest.mark.parametrize("t", [1.0, 2.0])
@pytest.mark.parametrize("term", TERMS)
def test_each_term_alone(term, t):
  """One term enabled, at its default weight: loss, logged term and dloss/dlogits."""
  logits, seeds, images = inputs()
  config = fcam_config(enabled=(term,))
  loss, terms, grad = run(config, logits, seeds, images, t)
  want_loss, want_terms, want_grad = reference(logits, seeds, images, t, weights_of(config),
                                               enabled=(term,))
  assert set(terms) == {term}
  np.testing.assert_allclose(terms[term], want_terms[term], rtol=1e-5, err_msg=term)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5, err_msg=term)
  assert_grad_close(grad, want_grad, name=term)


@pytest.mark.parametrize("term", TERMS)
def test_gradient_is_linear_in_the_weight(term):
  logits, seeds, images = inputs()
  t = 1.0
  _, _, unit = reference(logits, seeds, images, t, dict.fromkeys(TERMS, 1.0), enabled=(term,))
  grads = {}
  for weight in (0.25, 1.0, 3.5):
    loss, terms, grads[weight] = run(fcam_config(enabled=(term,), **{term: weight}),
                                     logits, seeds, images, t)
    np.testing.assert_allclose(loss, weight * terms[term], rtol=1e-6)
    assert_grad_close(grads[weight], weight * unit, name=f"{term} weight {weight}")
  # Float32 rounding in the softmax chain: entries near zero differ by up to 4.2e-6 of the
  # largest (measured, CRF term); 10x, rounded up (tests/README.md, "Tolerances").
  np.testing.assert_allclose(grads[3.5], 14.0 * grads[0.25], rtol=5e-5,
                             atol=5e-5 * np.max(np.abs(grads[3.5])))
  loss, _, zero = run(fcam_config(enabled=(term,), **{term: 0.0}), logits, seeds, images, t)
  assert loss == 0.0 and not np.any(zero)


# Weights that make the three gradients of comparable size on these inputs, so that a
# missing one shows in the sum.
BALANCED = {"seeds": 1.0, "crf": 2e-3, "size": 0.5}


def test_balanced_weights_are_balanced():
  logits, seeds, images = inputs()
  norms = [np.abs(reference(logits, seeds, images, 1.0, BALANCED, enabled=(n,))[2]).max()
           for n in TERMS]
  assert max(norms) < 20 * min(norms), dict(zip(TERMS, norms))


@pytest.mark.parametrize("off", TERMS)
def test_a_disabled_term_has_no_value_and_no_gradient(off):
  logits, seeds, images = inputs()
  on = tuple(n for n in TERMS if n != off)
  t = 2.0
  loss, terms, grad = run(fcam_config(enabled=on, **BALANCED), logits, seeds, images, t)
  want_loss, want_terms, want_grad = reference(logits, seeds, images, t, BALANCED, enabled=on)
  assert set(terms) == set(on)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert_grad_close(grad, want_grad, name=f"without {off}")
  # Disabled means absent, not weighted by zero: a huge weight changes nothing.
  loss2, _, grad2 = run(fcam_config(enabled=on, **{**BALANCED, off: 1e6}),
                        logits, seeds, images, t)
  assert loss2 == loss and np.array_equal(grad2, grad)


@pytest.mark.parametrize("weights", [None, BALANCED])
def test_all_terms_together(weights):
  """The three terms at the default weights (docs/design.md §6) and at balanced ones."""
  logits, seeds, images = inputs()
  config = fcam_config(**(weights or {}))
  t = 1.0
  loss, terms, grad = run(config, logits, seeds, images, t)
  want_loss, want_terms, want_grad = reference(logits, seeds, images, t, weights_of(config))
  assert set(terms) == set(TERMS)
  for name in TERMS:
    np.testing.assert_allclose(terms[name], want_terms[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert_grad_close(grad, want_grad)
  # The size term enters once with its 0.5 (not 0.5 twice, nor the sum of the two means).
  size_only = 0.5 * (psi(-softmax64(logits)[..., 0].sum((1, 2)), t).mean()
                     + psi(-softmax64(logits)[..., 1].sum((1, 2)), t).mean())
  np.testing.assert_allclose(terms["size"], size_only, rtol=1e-5)


def test_seeds_label_the_foreground_channel():
  """Seeds sampled from a CAM that is high on a block and low elsewhere: the seed on the
  block is label 1, the decoder's foreground channel (outputs (background, foreground),
  docs/design.md §5), the one off it label 0; the seed term's gradient raises the
  foreground logit on the block and the background logit off it."""
  h = w = 24
  yy, xx = np.mgrid[0:h, 0:w]
  smooth = np.exp(-((yy - 16) ** 2 + (xx - 15) ** 2) / 40.0)
  block = (yy >= 10) & (yy < 20) & (xx >= 9) & (xx < 21)
  cam = np.where(block, 0.7 + 0.3 * smooth, 0.1 * smooth)
  cam = ((cam - cam.min()) / (cam.max() - cam.min())).astype(np.float32)
  sample = jax.jit(functools.partial(losses.sample_seeds, erosion=3, dilation=1))
  for key in range(3):
    seeds = np.asarray(sample(jnp.asarray(cam[None]), jax.random.key(key)))[0]
    fg, bg = np.argwhere(seeds == 1), np.argwhere(seeds == 0)
    assert len(fg) == 1 and len(bg) == 1 and (seeds >= 0).sum() == 2, seeds
    assert block[tuple(fg[0])] and not block[tuple(bg[0])], (fg, bg)
  logits = np.zeros((1, h, w, 2), np.float32)
  images = np.zeros((1, h, w, 3), np.float32)
  _, _, grad = run(fcam_config(enabled=("seeds",)), logits, seeds[None], images, 1.0)
  assert grad[(0, *fg[0], 1)] < 0 < grad[(0, *fg[0], 0)]  # descent raises foreground
  assert grad[(0, *bg[0], 0)] < 0 < grad[(0, *bg[0], 1)]


def test_crf_on_the_grid_is_close_to_the_exact_sum():
  """20x24 noise images at grid_cell 1.0, where the CRF filters on the bilateral grid
  (the loss is visibly off the exact sum, so it is not the exact 'direct' filter): loose
  agreement. Measured: loss +8.7 %, gradient cosine 0.99992; the bounds leave margin."""
  logits, seeds, images = inputs(h=20, w=24, b=2, seed=3)
  config = fcam_config(enabled=("crf",), crf=1.0)
  config.crf.grid_cell = 1.0
  loss, _, grad = run(config, logits, seeds, images, 1.0)
  want_loss, _, want_grad = reference(logits, seeds, images, 1.0, weights_of(config),
                                      enabled=("crf",))
  np.testing.assert_allclose(loss, want_loss, rtol=0.15)
  cos = np.sum(grad * want_grad) / np.linalg.norm(grad) / np.linalg.norm(want_grad)
  assert cos > 0.999, cos
