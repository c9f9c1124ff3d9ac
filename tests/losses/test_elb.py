"""ELB, the size constraint and the t schedule (docs/design.md §6).

The extended log-barrier (Kervadec et al., as the F-CAM paper uses it), for z <= 0:

  psi_t(z) = -log(-z) / t                      if z <= -1/t^2
             t z - log(1/t^2) / t + 1/t        otherwise

evaluated here independently in float64; its derivative is 1 / (t (-z)) on the log
branch and t on the linear one. The total stage-2 loss is in test_total_loss.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import losses

TS = (1.0, 1.01, 2.0, 5.0, 10.0)


def np_elb(z, t):
  """psi_t(z) in float64, branch by branch."""
  z = np.asarray(z, np.float64)
  log_branch = z <= -1.0 / t ** 2
  safe = np.where(log_branch, z, -1.0)  # the log's argument in the unused branch
  return np.where(log_branch, -np.log(-safe) / t, t * z - np.log(1.0 / t ** 2) / t + 1.0 / t)


def np_elb_grad(z, t):
  z = np.asarray(z, np.float64)
  log_branch = z <= -1.0 / t ** 2
  return np.where(log_branch, 1.0 / (t * -np.where(log_branch, z, -1.0)), t)


def z_grid(t):
  """float32 z values: far on the log branch, between -1/t and -1/t^2, around the switch
  z0 = -1/t^2 (relative offsets 1e-2 .. 1e-4 either side), the linear branch, z > 0."""
  z0 = -1.0 / t ** 2
  far = -np.logspace(-2, 4, 61)
  between = np.linspace(-1.0 / t, z0, 12)[1:-1]
  near = z0 * (1.0 + np.array([1e-2, 1e-3, 1e-4, -1e-4, -1e-3, -1e-2]))
  linear = np.linspace(z0, 3.0, 40)[1:]
  z = np.concatenate([far, between, near, linear, [0.0, 1e-6, 50.0]])
  return np.unique(z.astype(np.float32))


def _t32(t):
  """t as the code sees it (float32), in float64: the reference uses the same t."""
  return float(np.float32(t))


@pytest.mark.parametrize("t", TS)
def test_elb_values_on_a_dense_grid(t):
  z = z_grid(t)
  t32 = _t32(t)
  z0 = -1.0 / t32 ** 2
  assert (z < z0).sum() >= 30 and (z > z0).sum() >= 30
  if t > 1.0:  # points the switch at -1/t would put on the wrong branch
    assert ((z > -1.0 / t32) & (z < z0)).sum() >= 10
  got = np.asarray(jax.jit(losses.elb)(jnp.asarray(z), jnp.float32(t)), np.float64)  # t traced
  want = np_elb(z, t32)
  # float32: ~1 ulp of z through log (abs ~1e-7) and of t z on the linear branch.
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("t", TS)
def test_elb_derivative_on_a_dense_grid(t):
  z = z_grid(t)
  t32 = _t32(t)
  grad = jax.jit(jax.grad(lambda z, t: jnp.sum(losses.elb(z, t))))
  got = np.asarray(grad(jnp.asarray(z), jnp.float32(t)), np.float64)
  np.testing.assert_allclose(got, np_elb_grad(z, t32), rtol=2e-6)
  assert np.all(got > 0)  # psi_t is increasing: the constraint pushes z down


@pytest.mark.parametrize("t", TS)
def test_elb_is_continuous_with_slope_t_at_the_true_switch(t):
  """At z0 = -1/t^2 (computed here, in float64) both branches give 2 log(t) / t and
  slope t; the code's value just either side of z0 (a few float32 ulps) must too."""
  t32 = _t32(t)
  z0 = -1.0 / t32 ** 2
  at_switch = 2.0 * np.log(t32) / t32
  np.testing.assert_allclose(-np.log(-z0) / t32, at_switch, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(t32 * z0 - np.log(1 / t32 ** 2) / t32 + 1 / t32, at_switch,
                             rtol=1e-12, atol=1e-15)
  below = np.nextafter(np.float32(z0), np.float32(-np.inf))
  above = np.nextafter(np.float32(z0), np.float32(np.inf))
  zs = np.array([np.nextafter(below, np.float32(-np.inf)), below, np.float32(z0),
                 above, np.nextafter(above, np.float32(np.inf))], np.float32)
  got = np.asarray(jax.jit(losses.elb)(jnp.asarray(zs), jnp.float32(t)), np.float64)
  np.testing.assert_allclose(got, at_switch, atol=1e-6)
  slope = jax.jit(jax.vmap(jax.grad(losses.elb), (0, None)))(jnp.asarray(zs), jnp.float32(t))
  np.testing.assert_allclose(np.asarray(slope), t32, rtol=1e-5)


def test_elb_gradient_is_finite_everywhere():
  z = jnp.asarray([-1e6, -1.0, -1e-8, 0.0, 1e-8, 1.0, 1e6], jnp.float32)
  g = jax.grad(lambda z: jnp.sum(losses.elb(z, 2.0)))(z)
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g), np_elb_grad(np.asarray(z), 2.0), rtol=1e-6)


def test_size_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 8, 10, 2))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  probs[1, ..., 1] = 1e-7  # an (almost) empty foreground: the barrier's linear part
  probs[1, ..., 0] = 1 - 1e-7
  t = 1.7
  bg, fg = -probs[..., 0].sum((1, 2)), -probs[..., 1].sum((1, 2))
  expected = 0.5 * (np_elb(bg, t).mean() + np_elb(fg, t).mean())
  got = jax.jit(losses.size_loss)(jnp.asarray(probs, jnp.float32), t)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  grad = jax.grad(losses.size_loss)(jnp.asarray(probs, jnp.float32), t)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_next_t():
  assert float(losses.next_t(1.0)) == pytest.approx(1.01)
  t = jnp.float32(1.0)
  step = jax.jit(losses.next_t)
  for _ in range(300):
    t = step(t)
  assert float(t) == pytest.approx(10.0)  # 1.01^300 = 19.8, capped
  assert float(losses.next_t(5.0, mult=1.5, t_max=6.0)) == 6.0
