"""The U-Net decoder (docs/design.md §5) against numpy references and the design's sizes."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax.models import decoder as dec
from fcam_jax.models.inception import InceptionV3
from fcam_jax.models.resnet import ResNet50
from fcam_jax.models.small import SmallNet
from fcam_jax.models.vgg import VGG16

# Decoder inputs at 224x224, shallow -> deep, (channels, side) (docs/design.md §2 / §5).
DESIGN_TAPS = {
    ResNet50: [(64, 112), (256, 56), (512, 28), (1024, 28), (2048, 28)],
    InceptionV3: [(64, 112), (80, 57), (288, 29), (768, 29), (1024, 29)],
    VGG16: [(128, 112), (256, 56), (1024, 28)],
    SmallNet: [(16, 224), (32, 112), (64, 56), (128, 28)],
}
DESIGN_MILLIONS = {ResNet50: 9.0, InceptionV3: 5.7, VGG16: 23.1}


def np_resize_align_corners(x, size):
  """Direct 2-D bilinear interpolation, align_corners=True; x: (H, W, C)."""
  h_in, w_in = x.shape[:2]
  h, w = size
  out = np.zeros((h, w, x.shape[2]), np.float64)
  for i in range(h):
    y = i * (h_in - 1) / (h - 1) if h > 1 else 0.0
    y0 = int(np.floor(y)); y1 = min(y0 + 1, h_in - 1); fy = y - y0
    for j in range(w):
      xx = j * (w_in - 1) / (w - 1) if w > 1 else 0.0
      x0 = int(np.floor(xx)); x1 = min(x0 + 1, w_in - 1); fx = xx - x0
      out[i, j] = ((1 - fy) * (1 - fx) * x[y0, x0] + (1 - fy) * fx * x[y0, x1]
                   + fy * (1 - fx) * x[y1, x0] + fy * fx * x[y1, x1])
  return out


def np_conv3x3(x, kernel_hwio, bias=None):
  """Stride 1, zero padding 1; x: (H, W, Cin)."""
  xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  out = np.zeros((*x.shape[:2], kernel_hwio.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += xp[dy:dy + x.shape[0], dx:dx + x.shape[1]] @ kernel_hwio[dy, dx]
  return out if bias is None else out + bias


@pytest.mark.parametrize("src,dst", [
    ((56, 56), (28, 28)), ((58, 58), (57, 57)), ((114, 114), (112, 112)),
    ((5, 7), (9, 4)), ((3, 4), (1, 6)), ((6, 6), (6, 6))])
def test_resize_align_corners_matches_reference(src, dst):
  x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
  got = np.asarray(dec.resize_bilinear_align_corners(jnp.asarray(x), dst))
  assert got.shape == (2, *dst, 3)
  for b in range(2):
    np.testing.assert_allclose(got[b], np_resize_align_corners(x[b], dst), rtol=1e-5, atol=1e-5)


def test_resize_is_not_half_pixel():
  # align_corners=True keeps the corner pixels; jax.image.resize (half-pixel) does not.
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  got = dec.resize_bilinear_align_corners(x, (7, 7))
  assert got[0, 0, 0, 0] == 0 and got[0, -1, -1, 0] == 15 and got[0, 0, -1, 0] == 3
  half = jax.image.resize(x, (1, 7, 7, 1), "bilinear")
  assert not np.allclose(np.asarray(got), np.asarray(half))


def test_upsample_nearest2x():
  x = np.random.default_rng(1).normal(size=(1, 3, 5, 2)).astype(np.float32)
  got = np.asarray(dec.upsample_nearest2x(jnp.asarray(x)))
  rows, cols = np.arange(6) // 2, np.arange(10) // 2
  np.testing.assert_array_equal(got, x[:, rows][:, :, cols])


def _decoder_shapes(cls, batch=2, dtype=jnp.float32, **kw):
  taps = [jax.ShapeDtypeStruct((batch, s, s, c), dtype) for c, s in DESIGN_TAPS[cls]]
  model = dec.decoder_for(cls, **kw)
  return jax.eval_shape(
      lambda t: model.init_with_output(jax.random.key(0), t, (224, 224)), taps)


def _decoder_count(tap_channels, channels, center):
  """Parameters of the U-Net: convs without bias + BN (2 per channel) + the head."""
  cbr = lambda cin, cout: cin * cout * 9 + 2 * cout
  *skips, x = tap_channels
  n = 2 * cbr(x, x) if center else 0
  skips = skips[::-1]
  for i, c in enumerate(channels):
    n += cbr(x + (skips[i] if i < len(skips) else 0), c) + cbr(c, c)
    x = c
  return n + x * 2 * 9 + 2


@pytest.mark.parametrize("cls", [ResNet50, InceptionV3, VGG16, SmallNet])
def test_decoder_shape_and_parameter_count(cls):
  out, variables = _decoder_shapes(cls)
  assert out.shape == (2, 224, 224, 2) and out.dtype == jnp.float32
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
  channels = {VGG16: (256, 128, 64), SmallNet: (64, 32, 16)}.get(cls, (256, 128, 64, 32, 16))
  assert n == _decoder_count([c for c, _ in DESIGN_TAPS[cls]], channels, center=cls is VGG16)
  if cls in DESIGN_MILLIONS:
    assert abs(n / 1e6 - DESIGN_MILLIONS[cls]) < 0.1, n


def test_decoder_for_defaults_and_overrides():
  assert dec.decoder_for(VGG16).center and dec.decoder_for(VGG16).channels == (256, 128, 64)
  for cls in (ResNet50, InceptionV3):
    d = dec.decoder_for(cls)
    assert not d.center and d.channels == (256, 128, 64, 32, 16)
  assert dec.decoder_for(SmallNet).channels == (64, 32, 16)
  d = dec.decoder_for(ResNet50, channels=(8, 4), bn_axis_name="b", dtype=jnp.bfloat16)
  assert d.channels == (8, 4) and d.bn_axis_name == "b" and d.dtype == jnp.bfloat16
  assert dec.decoder_for(ResNet50, channels=()).channels == (256, 128, 64, 32, 16)


def test_decoder_bfloat16_and_bn_axis_name():
  out, variables = _decoder_shapes(ResNet50, batch=1, dtype=jnp.bfloat16)
  assert out.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  model = dec.UNetDecoder(channels=(4,), bn_axis_name="batch")
  taps = [jax.ShapeDtypeStruct((2, 1, 8, 8, 3), jnp.float32),
          jax.ShapeDtypeStruct((2, 1, 4, 4, 5), jnp.float32)]
  variables = jax.eval_shape(lambda t: model.init(jax.random.key(0), [a[0] for a in t], (8, 8)),
                             taps)
  step = lambda v, t: model.apply(v, t, (8, 8), train=True, mutable=["batch_stats"])
  jax.eval_shape(jax.vmap(step, in_axes=(None, 0), axis_name="batch"), variables, taps)
  with pytest.raises(NameError):
    jax.eval_shape(lambda v, t: step(v, [a[0] for a in t]), variables, taps)


def test_decoder_matches_numpy_reference():
  """Center block, resized skips, a skip-less block and the final resize, end to end."""
  rng = np.random.default_rng(3)
  taps = [rng.normal(size=(2, 9, 9, 3)), rng.normal(size=(2, 5, 5, 4)),
          rng.normal(size=(2, 3, 3, 6))]
  taps = [jnp.asarray(t, jnp.float32) for t in taps]
  model = dec.UNetDecoder(channels=(5, 4, 3), center=True)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.key(0), t, (20, 17)), taps)

  def fill(path, s):
    leaf = path[-1].key
    v = rng.uniform(0.5, 2.0, s.shape) if leaf in ("var", "scale") else rng.normal(size=s.shape)
    return jnp.asarray(v * (0.5 if leaf == "kernel" else 1.0), jnp.float32)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  got = np.asarray(jax.jit(lambda v, t: model.apply(v, t, (20, 17)))(variables, taps))
  assert got.shape == (2, 20, 17, 2)

  p = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, variables["params"]), sep="/")
  s = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, variables["batch_stats"]),
                                      sep="/")

  def cbr(x, name):
    y = np_conv3x3(x, p[f"{name}/conv/kernel"])
    y = (y - s[f"{name}/bn/mean"]) / np.sqrt(s[f"{name}/bn/var"] + 1e-5)
    return np.maximum(y * p[f"{name}/bn/scale"] + p[f"{name}/bn/bias"], 0)

  for b in range(2):
    t = [np.asarray(a[b], np.float64) for a in taps]
    x = cbr(cbr(t[2], "center_conv1"), "center_conv2")
    for i, skip in enumerate([t[1], t[0], None]):
      x = x.repeat(2, axis=0).repeat(2, axis=1)
      if skip is not None:
        x = np.concatenate([np_resize_align_corners(x, skip.shape[:2]), skip], axis=-1)
      x = cbr(cbr(x, f"block{i}/conv1"), f"block{i}/conv2")
    assert x.shape[:2] == (18, 18)
    x = np_resize_align_corners(np_conv3x3(x, p["head/kernel"], p["head/bias"]), (20, 17))
    np.testing.assert_allclose(got[b], x, rtol=2e-4, atol=2e-4 * np.abs(x).max())
