"""common.Conv / max_pool / avg_pool against direct numpy versions of torch's semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax.models import common


def torch_pool_out(n, k, s, p, ceil):
  """torch's pooling output size (aten pooling_output_shape, dilation 1)."""
  num = n + 2 * p - k
  out = (-(-num // s) if ceil else num // s) + 1
  if ceil and (out - 1) * s >= n + p:  # the last window must start inside input or left pad
    out -= 1
  return out


def np_max_pool(x, k, s, p, ceil):
  """x: (H, W, C). Windows clipped to the input (padding never wins a max)."""
  ho, wo = (torch_pool_out(n, k, s, p, ceil) for n in x.shape[:2])
  out = np.empty((ho, wo, x.shape[2]), x.dtype)
  for i in range(ho):
    r0 = i * s - p
    for j in range(wo):
      c0 = j * s - p
      win = x[max(r0, 0):min(r0 + k, x.shape[0]), max(c0, 0):min(c0 + k, x.shape[1])]
      out[i, j] = win.max(axis=(0, 1))
  return out


def np_avg_pool(x, k, s, p):
  """count_include_pad=True, floor mode: zero padding, divide by k*k."""
  xp = np.pad(x, ((p, p), (p, p), (0, 0)))
  ho, wo = (torch_pool_out(n, k, s, p, False) for n in x.shape[:2])
  out = np.empty((ho, wo, x.shape[2]), x.dtype)
  for i in range(ho):
    for j in range(wo):
      out[i, j] = xp[i * s:i * s + k, j * s:j * s + k].sum(axis=(0, 1)) / (k * k)
  return out


def np_conv(x, w_oihw, bias, stride, padding):
  """torch Conv2d (cross-correlation, zero padding) on x: (H, W, Cin)."""
  (sh, sw), (ph, pw) = stride, padding
  o, i, kh, kw = w_oihw.shape
  xp = np.pad(x, ((ph, ph), (pw, pw), (0, 0)))
  ho = (x.shape[0] + 2 * ph - kh) // sh + 1
  wo = (x.shape[1] + 2 * pw - kw) // sw + 1
  out = np.zeros((ho, wo, o), np.float64)
  for r in range(ho):
    for c in range(wo):
      patch = xp[r * sh:r * sh + kh, c * sw:c * sw + kw]  # (kh, kw, i)
      out[r, c] = np.einsum("hwi,oihw->o", patch, w_oihw)
  return out + (0 if bias is None else bias)


@pytest.mark.parametrize("size,k,s,p,ceil,expected", [
    (112, 3, 2, 1, True, 57),   # InceptionV3-WSOL stem pool 1
    (57, 3, 2, 1, True, 29),    # stem pool 2
    (112, 3, 2, 1, False, 56),  # ResNet max-pool
    (5, 2, 2, 1, True, 3),      # ceil mode drops a window starting in the right pad
    (6, 3, 2, 0, True, 3),      # ceil mode keeps a clipped last window
    (224, 2, 2, 0, False, 112),
])
def test_max_pool_output_size(size, k, s, p, ceil, expected):
  assert torch_pool_out(size, k, s, p, ceil) == expected
  y = common.max_pool(jnp.zeros((1, size, size + 1, 1)), k, s, p, ceil)
  assert y.shape == (1, expected, torch_pool_out(size + 1, k, s, p, ceil), 1)


@pytest.mark.parametrize("hw,k,s,p,ceil", [
    ((11, 10), 3, 2, 1, True), ((12, 9), 3, 2, 1, True), ((7, 8), 3, 2, 0, True),
    ((9, 9), 2, 2, 0, False), ((10, 7), 3, 1, 1, False), ((5, 6), 2, 2, 1, True),
    ((13, 13), 3, 2, 1, False)])
def test_max_pool_matches_torch_semantics(hw, k, s, p, ceil):
  # Negative values everywhere: a zero-padded pool would differ from torch's at the border.
  x = -np.abs(np.random.default_rng(0).normal(size=(*hw, 3))).astype(np.float32) - 0.1
  got = common.max_pool(jnp.asarray(x)[None], k, s, p, ceil)[0]
  np.testing.assert_array_equal(np.asarray(got), np_max_pool(x, k, s, p, ceil))


@pytest.mark.parametrize("hw,k,s,p", [((7, 9), 3, 1, 1), ((8, 8), 3, 2, 1), ((6, 5), 2, 2, 0)])
def test_avg_pool_counts_padding(hw, k, s, p):
  x = np.random.default_rng(1).normal(size=(*hw, 2)).astype(np.float32)
  got = common.avg_pool(jnp.asarray(x)[None], k, s, p)[0]
  np.testing.assert_allclose(np.asarray(got), np_avg_pool(x, k, s, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding,hw", [
    ((3, 3), (1, 1), (1, 1), (8, 7)),
    ((3, 3), (2, 2), (1, 1), (9, 8)),
    ((7, 7), (2, 2), (3, 3), (11, 10)),
    ((1, 7), (1, 1), (0, 3), (5, 9)),
    ((7, 1), (1, 1), (3, 0), (9, 5)),
    ((5, 5), (1, 1), (2, 2), (6, 6)),
    ((3, 3), (2, 2), (0, 0), (9, 10)),
    ((1, 1), (2, 2), (0, 0), (7, 8)),
])
def test_conv_matches_torch_semantics(kernel, stride, padding, hw):
  rng = np.random.default_rng(2)
  cin, cout = 3, 4
  x = rng.normal(size=(*hw, cin)).astype(np.float32)
  w = rng.normal(size=(cout, cin, *kernel)).astype(np.float32)  # torch OIHW
  b = rng.normal(size=(cout,)).astype(np.float32)
  conv = common.Conv(cout, kernel, stride, padding, use_bias=True)
  params = {"params": {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0)), "bias": jnp.asarray(b)}}
  # The layout the module creates is the one we fill in.
  shapes = jax.eval_shape(conv.init, jax.random.key(0), jnp.asarray(x)[None])
  assert shapes["params"]["kernel"].shape == (*kernel, cin, cout)
  got = conv.apply(params, jnp.asarray(x)[None])[0]
  np.testing.assert_allclose(np.asarray(got), np_conv(x, w, b, stride, padding),
                             rtol=1e-4, atol=1e-4)
