"""ELB, the size constraint, the t schedule and the total stage-2 loss (SPEC §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import config_lib
from fcam_jax import losses
from tests.losses.test_crf import exact_loss_and_grad, synthetic_image


def np_elb(z, t):
  z = np.asarray(z, np.float64)
  return np.where(z <= -1 / t ** 2, -np.log(np.abs(np.minimum(z, -1e-300))) / t,
                  t * z - np.log(1 / t ** 2) / t + 1 / t)


@pytest.mark.parametrize("t", [1.0, 2.5, 10.0])
def test_elb_values(t):
  z = np.array([-5e4, -100.0, -3.0, -1.0, -0.5, -0.01, 0.0, 0.3, 7.0])
  got = jax.jit(losses.elb)(jnp.asarray(z, jnp.float32), jnp.float32(t))  # t traced
  np.testing.assert_allclose(np.asarray(got), np_elb(z, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1.0, 3.0, 10.0])
def test_elb_is_continuous_and_smooth_at_the_switch(t):
  z0 = -1.0 / t ** 2
  eps = 1e-3 * abs(z0)
  value = jax.jit(losses.elb)
  left, right = float(value(z0 - eps, t)), float(value(z0 + eps, t))
  assert abs(left - right) < 2.5 * eps * t  # slope t on both sides
  grad = jax.jit(jax.grad(losses.elb))
  np.testing.assert_allclose(float(grad(z0 - eps, t)), float(grad(z0 + eps, t)), rtol=5e-3)
  np.testing.assert_allclose(float(grad(z0 + eps, t)), t, rtol=1e-6)  # linear part


def test_elb_gradient_is_finite_everywhere():
  z = jnp.asarray([-1e6, -1.0, -1e-8, 0.0, 1e-8, 1.0, 1e6], jnp.float32)
  g = jax.grad(lambda z: jnp.sum(losses.elb(z, 2.0)))(z)
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(np.asarray(g)[:2], [-1 / (2 * -1e6), -1 / (2 * -1.0)], rtol=1e-5)


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


def _stage2_inputs(h=20, w=24, b=2):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(b, h, w, 2)).astype(np.float32)
  seeds = rng.choice([-1, -1, -1, 0, 1], size=(b, h, w)).astype(np.int32)
  images = np.stack([synthetic_image(h, w, seed=i) for i in range(b)]).astype(np.float32)
  return logits, seeds, images


def test_total_loss_combines_the_terms():
  config = config_lib.base_config().fcam
  config.crf.grid_cell = 1.0
  logits, seeds, images = _stage2_inputs()
  t = 1.3
  loss, terms = jax.jit(lambda l, s, i, t: losses.total_loss(l, s, i, t, config))(
      logits, seeds, images, t)
  assert set(terms) == {"seeds", "crf", "size"}
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  logp = np.log(probs)
  mask = seeds >= 0
  ce = -np.take_along_axis(logp, np.maximum(seeds, 0)[..., None], -1)[..., 0][mask].mean()
  crf, _ = exact_loss_and_grad(probs, images, 100.0, 15.0)
  size = 0.5 * (np_elb(-probs[..., 0].sum((1, 2)), t).mean()
                + np_elb(-probs[..., 1].sum((1, 2)), t).mean())
  np.testing.assert_allclose(float(terms["seeds"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(terms["crf"]), crf, rtol=0.05)
  np.testing.assert_allclose(float(terms["size"]), size, rtol=1e-5)
  expected = 1.0 * ce + 2e-9 * float(terms["crf"]) + 0.1 * size  # the 0.5 only once
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_total_loss_switches_and_weights():
  config = config_lib.base_config().fcam
  config.crf.grid_cell = 1.0
  logits, seeds, images = _stage2_inputs()
  total = lambda: jax.jit(lambda l: losses.total_loss(l, seeds, images, 1.0, config))
  _, full = total()(logits)
  config.crf.enabled = False
  config.seeds.weight = 3.0
  config.size.weight = 0.5
  loss, terms = total()(logits)
  assert set(terms) == {"seeds", "size"}
  np.testing.assert_allclose(float(loss), 3.0 * float(full["seeds"]) + 0.5 * float(full["size"]),
                             rtol=1e-5)
  config.seeds.enabled = config.size.enabled = False
  loss, terms = total()(logits)
  assert terms == {} and float(loss) == 0.0
  # Gradients reach the logits through every term.
  config.seeds.enabled = config.size.enabled = config.crf.enabled = True
  grad = jax.jit(jax.grad(lambda l: losses.total_loss(l, seeds, images, 1.0, config)[0]))(
      logits)
  assert np.all(np.isfinite(np.asarray(grad))) and np.any(np.asarray(grad))
