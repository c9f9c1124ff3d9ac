"""fcam_jax.cams against plain-numpy references written from the formulas (docs/design.md §4).

The references run SmallNet in float64 numpy from the Flax variables; G comes from
the closed form of the linear WGAP head (last tap) or from a hand-written numpy
backward pass through block4 (tap 'block3'), itself checked by finite differences.
"""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fcam_jax import cams, config_lib
from fcam_jax.cams import methods as cam_methods
from fcam_jax.models.classifier import Classifier
from fcam_jax.models.small import SmallNet

NUM_CLASSES = 5
SIZE = 32
LABELS = np.array([0, 3, 1])
NEG_CLASS = 4  # its head column is made all-negative: CAM < 0 everywhere
EPS = 1e-5


# ---------------------------------------------------------------------------- numpy SmallNet


def np_conv(x, k):
  """3x3 conv, stride 1, padding 1, no bias; x NHWC, k HWIO."""
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, i:i + h, j:j + w] @ k[i, j] for i in range(3) for j in range(3))


def np_conv_input_grad(dy, k):
  return np_conv(dy, k[::-1, ::-1].transpose(0, 1, 3, 2))


def np_pool(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_pool_grad(x, dy):
  up = lambda t: np.repeat(np.repeat(t, 2, axis=1), 2, axis=2)
  return (x == up(np_pool(x))) * up(dy)  # no ties (checked by the fixture)


class NumpyNet:
  """SmallNet + WGAP head in float64, inference-mode BatchNorm."""

  def __init__(self, variables):
    to64 = lambda t: np.asarray(t, np.float64)
    self.p = jax.tree_util.tree_map(to64, variables["params"])
    self.s = jax.tree_util.tree_map(to64, variables["batch_stats"])
    self.w = self.p["head"]["fc"]["kernel"]
    self.bias = self.p["head"]["fc"]["bias"]

  def _unit(self, block, i):
    p = self.p["backbone"][block][f"conv{i}"]
    s = self.s["backbone"][block][f"conv{i}"]["bn"]
    gain = p["bn"]["scale"] / np.sqrt(s["var"] + EPS)
    return p["conv"]["kernel"], gain, p["bn"]["bias"] - s["mean"] * gain

  def block(self, name, x, record=False):
    if name != "block1":
      x = np_pool(x)
    saved = []
    for i in (1, 2):
      k, gain, shift = self._unit(name, i)
      pre = np_conv(x, k) * gain + shift
      saved.append((x, pre))
      x = np.maximum(pre, 0)
    return (x, saved) if record else x

  def taps(self, images):
    out, x = {}, np.asarray(images, np.float64)
    for name in SmallNet.STAGES:
      x = out[name] = self.block(name, x)
    return out

  def head(self, a):
    return a.mean(axis=(1, 2)) @ self.w + self.bias

  def logits(self, images):
    return self.head(self.taps(images)["block4"])

  def tail_from_block3(self, a3):
    return self.head(self.block("block4", a3))

  def grad_last(self, a4, labels):
    """G at block4: the head is linear, G = W[:, c] / (h w) everywhere."""
    b, h, w, _ = a4.shape
    return np.broadcast_to(self.w.T[labels][:, None, None, :] / (h * w), a4.shape)

  def grad_block3(self, a3, labels):
    """G at block3 by a hand-written backward pass through block4 and the head."""
    a4, saved = self.block("block4", a3, record=True)
    d = self.grad_last(a4, labels)
    for i in (2, 1):
      k, gain, _ = self._unit("block4", i)
      _, pre = saved[i - 1]
      d = np_conv_input_grad(d * (pre > 0) * gain, k)
    return np_pool_grad(a3, d)


def np_upsample(maps, out_h, out_w):
  """torch F.interpolate(bilinear, align_corners=False), per output index."""
  def axis(n_in, n_out):
    scale = n_in / n_out
    i0, i1, l1 = [], [], []
    for o in range(n_out):
      src = max(scale * (o + 0.5) - 0.5, 0.0)
      lo = min(int(src), n_in - 1)
      i0.append(lo)
      i1.append(lo + 1 if lo < n_in - 1 else lo)
      l1.append(src - lo)
    return np.array(i0), np.array(i1), np.array(l1)
  y0, y1, ly = axis(maps.shape[1], out_h)
  x0, x1, lx = axis(maps.shape[2], out_w)
  ly, lx = ly[None, :, None], lx[None, None, :]
  top = (1 - lx) * maps[:, y0][:, :, x0] + lx * maps[:, y0][:, :, x1]
  bot = (1 - lx) * maps[:, y1][:, :, x0] + lx * maps[:, y1][:, :, x1]
  return (1 - ly) * top + ly * bot


def np_normalize(maps):
  lo = maps.min(axis=(1, 2), keepdims=True)
  span = maps.max(axis=(1, 2), keepdims=True) - lo
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(span > 0, (maps - lo) / span, 0.0)


# ---------------------------------------------------------------------------- numpy CAMs


relu = lambda t: np.maximum(t, 0)
wsum = lambda a, w: np.einsum("bhwk,bk->bhw", a, w)


def np_div0(num, den):
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den != 0, num / den, 0.0)


def np_gradcampp_w(a, g2, g3, g_last):
  alpha = np_div0(g2, 2 * g2 + (a * g3).sum(axis=(1, 2), keepdims=True))
  return (alpha * relu(g_last)).sum(axis=(1, 2))


def np_gradient_cam(method, a, g):
  if method == "gradcam":
    return relu(wsum(a, g.mean(axis=(1, 2))))
  if method == "gradcampp":
    return relu(wsum(a, np_gradcampp_w(a, g ** 2, g ** 3, g)))
  if method == "gradcampp_quirk":
    return relu(wsum(a, (g ** 2 * relu(g)).sum(axis=(1, 2))))
  if method == "xgradcam":
    return relu(wsum(a, np_div0((g * a).sum(axis=(1, 2)), a.sum(axis=(1, 2)))))
  if method == "layercam":
    return relu((relu(g) * a).sum(-1))
  if method == "hirescam":
    return relu((g * a).sum(-1))
  raise ValueError(method)


def np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def setup():
  """SmallNet with random numpy weights and BatchNorm statistics (no slow jitted init)."""
  model = Classifier(backbone=SmallNet(), num_classes=NUM_CLASSES)
  images = np.random.RandomState(0).randn(len(LABELS), SIZE, SIZE, 3).astype(np.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images[:1])
  rs = np.random.RandomState(1)

  def fill(path, leaf):
    name, c = path[-1].key, leaf.shape[-1]
    if name == "kernel":  # conv HWIO (He normal) or head (in, out)
      return rs.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    return {"scale": lambda: rs.uniform(0.5, 1.5, c), "bias": lambda: rs.normal(0, 0.2, c),
            "mean": lambda: rs.normal(0, 0.2, c), "var": lambda: rs.uniform(0.5, 2.0, c)}[name]()

  variables = jax.tree_util.tree_map_with_path(
      lambda p, l: np.asarray(fill(p, l), np.float32), shapes)
  params, stats = variables["params"], variables["batch_stats"]
  # A positive tap 'block3': no ReLU zeros, hence no max-pool ties in the reference backward.
  params["backbone"]["block3"]["conv2"]["bn"]["bias"] += 3.0
  stats["backbone"]["block3"]["conv2"]["bn"]["var"] *= 25.0
  # Channel 0 of taps block2 and block4 is constant (0.5): a degenerate channel.
  for block in ("block2", "block4"):
    params["backbone"][block]["conv2"]["bn"]["scale"][0] = 0.0
    params["backbone"][block]["conv2"]["bn"]["bias"][0] = 0.5
    stats["backbone"][block]["conv2"]["bn"]["mean"][0] = 0.0
  params["head"]["fc"]["bias"] = rs.normal(0, 1, NUM_CLASSES).astype(np.float32)
  kernel = params["head"]["fc"]["kernel"]
  kernel[:, NEG_CLASS] = -np.abs(kernel[:, NEG_CLASS]) - 0.01

  ref = NumpyNet(variables)
  taps = ref.taps(images)
  a3 = taps["block3"]
  pooled = np.sort(a3.reshape(3, 4, 2, 4, 2, -1).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4), -1)
  assert a3.min() > 0 and np.all(pooled[:, -1] - pooled[:, -2] > 1e-6)
  for tap in ("block2", "block4"):
    assert np.ptp(taps[tap][..., 0]) == 0 and np.mean(np.ptp(taps[tap], axis=(1, 2)) > 0) > 0.5
  return model, variables, images, ref, taps


def run(setup, method, labels=LABELS, **kw):
  model, variables, images, _, _ = setup
  return np.asarray(cams.compute(method, model, variables, images, labels, **kw))


def assert_maps_close(got, want, rtol=1e-4):
  """Close relative to each image's largest value (maps have arbitrary scale)."""
  assert got.shape == want.shape, (got.shape, want.shape)
  scale = np.maximum(np.abs(want).max(axis=(1, 2), keepdims=True), 1e-6)
  np.testing.assert_allclose(got / scale, want / scale, atol=rtol, rtol=0)


# ---------------------------------------------------------------------------- tests


def test_methods_and_defaults_match_config():
  assert cams.METHODS == config_lib.CAM_METHODS
  base = config_lib.base_config().cam
  assert {k: base[k] for k in cams.DEFAULT_OPTIONS} == cams.DEFAULT_OPTIONS


@pytest.mark.parametrize("shape,size", [((2, 4, 4), (32, 32)), ((1, 7, 5), (16, 13)),
                                        ((1, 28, 28), (224, 224)), ((1, 7, 9), (3, 4))])
def test_upsample_matches_torch_formula(shape, size):
  maps = np.random.RandomState(1).randn(*shape)
  got = np.asarray(cams.upsample(jnp.asarray(maps, jnp.float32), size))
  np.testing.assert_allclose(got, np_upsample(maps, *size), atol=1e-5)
  if size[0] >= shape[1] and size[1] >= shape[2]:  # jax.image.resize antialiases only when shrinking
    ref = jax.image.resize(jnp.asarray(maps, jnp.float32), (shape[0],) + size, "bilinear")
    np.testing.assert_allclose(got, np.asarray(ref), atol=1e-5)


def test_normalize():
  rs = np.random.RandomState(2)
  maps = np.stack([rs.randn(5, 6), np.full((5, 6), 3.0), -np.abs(rs.randn(5, 6)) - 1,
                   np.zeros((5, 6))]).astype(np.float32)
  got = np.asarray(cams.minmax_normalize(jnp.asarray(maps)))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, np_normalize(maps.astype(np.float64)), atol=1e-6)
  np.testing.assert_array_equal(got[1], 0)
  np.testing.assert_array_equal(got[3], 0)
  for i in (0, 2):
    assert got[i].min() == 0 and got[i].max() == pytest.approx(1.0)


def test_numpy_reference_gradient_matches_finite_differences(setup):
  """The block3 reference G (hand-written backward) vs central differences."""
  _, _, _, ref, taps = setup
  a3 = taps["block3"]
  g = ref.grad_block3(a3, LABELS)
  rs = np.random.RandomState(3)
  for _ in range(12):
    b, i, j, k = (rs.randint(n) for n in a3.shape)
    e = np.zeros_like(a3[b:b + 1])
    e[0, i, j, k] = 1e-6
    f = lambda t: ref.tail_from_block3(t)[0, LABELS[b]]
    fd = (f(a3[b:b + 1] + e) - f(a3[b:b + 1] - e)) / 2e-6
    assert fd == pytest.approx(g[b, i, j, k], rel=1e-5, abs=1e-9)


def test_cam_matches_reference(setup):
  _, _, _, ref, taps = setup
  a4 = taps["block4"]
  want = wsum(a4, ref.w.T[LABELS])  # no ReLU, no bias
  assert want.min() < 0  # the missing ReLU matters
  assert_maps_close(run(setup, "cam"), want)


def test_class_gradients_match_reference(setup):
  model, variables, _, ref, taps = setup
  for tap, want in (("block4", ref.grad_last(taps["block4"], LABELS)),
                    ("block3", ref.grad_block3(taps["block3"], LABELS))):
    got = cams.class_gradients(model, variables, jnp.asarray(taps[tap], jnp.float32),
                               jnp.asarray(LABELS), tap)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("tap", ["block4", "block3"])
@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "gradcampp_quirk", "xgradcam",
                                    "layercam", "hirescam"])
def test_gradient_methods_match_reference(setup, method, tap):
  _, _, _, ref, taps = setup
  a = taps[tap]
  g = ref.grad_last(a, LABELS) if tap == "block4" else ref.grad_block3(a, LABELS)
  want = np_gradient_cam(method, a, g)
  options = ml_collections.ConfigDict(dict(cams.DEFAULT_OPTIONS))
  options.gradcampp_skip_alpha_division = method == "gradcampp_quirk"
  got = run(setup, method.replace("_quirk", ""), tap=tap, options=options)
  assert want.max() > 0
  # GradCAM++'s alpha divides by 2 G^2 + sum A G^3, which nearly cancels for some
  # channels here (|alpha| up to ~150): float32 rounding is amplified.
  assert_maps_close(got, want, rtol=1e-3 if method == "gradcampp" else 1e-4)


def test_wgap_closed_forms(setup):
  """WGAP head: G = W[:, c] / hw, so GradCAM = XGradCAM = ReLU(CAM) / hw."""
  labels = np.array([0, NEG_CLASS, 2])
  relu_cam = relu(run(setup, "cam", labels))
  for method in ("gradcam", "xgradcam"):
    got = run(setup, method, labels)
    for b in range(len(labels)):
      scale = got[b].max() / max(relu_cam[b].max(), 1e-12)
      if labels[b] == NEG_CLASS:
        np.testing.assert_array_equal(got[b], 0)
      else:
        assert scale == pytest.approx(1 / 16, rel=1e-4)
        np.testing.assert_allclose(got[b], scale * relu_cam[b], atol=1e-5 * got[b].max())


def test_negative_and_constant_maps(setup):
  """All-negative CAM normalizes to [0, 1]; ReLU'd methods give a constant 0 -> zeros."""
  labels = np.full(len(LABELS), NEG_CLASS)
  raw = run(setup, "cam", labels)
  assert raw.max() < 0
  norm = np.asarray(cams.minmax_normalize(raw))
  np.testing.assert_allclose(norm, np_normalize(raw.astype(np.float64)), atol=1e-6)
  for method in ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"):
    got = run(setup, method, labels)
    np.testing.assert_array_equal(got, 0)
    np.testing.assert_array_equal(np.asarray(cams.minmax_normalize(got)), 0)


def test_labels_are_per_image(setup):
  """Image b's map depends on labels[b] only (one VJP, a one-hot cotangent per image)."""
  first = run(setup, "gradcampp", labels=np.array([0, 3, 1]), tap="block3")
  second = run(setup, "gradcampp", labels=np.array([0, 2, 2]), tap="block3")
  np.testing.assert_array_equal(first[0], second[0])
  assert np.abs(first[1:] - second[1:]).max() > 1e-2 * np.abs(first).max()


def test_smoothgradcampp_matches_reference(setup):
  """Noise per the documented convention; G of each noisy pass, A of the clean input.

  At block3: at block4 G = W[:, c] / hw does not depend on the input, so noise is moot.
  """
  _, _, images, ref, taps = setup
  tap = "block3"
  n, std = 3, 0.3
  rng = jax.random.PRNGKey(7)
  options = dict(cams.DEFAULT_OPTIONS, smooth_samples=n, smooth_std=std)
  got = run(setup, "smoothgradcampp", tap=tap, rng=rng, options=options)
  g2 = g3 = 0
  for key in jax.random.split(rng, n):
    noisy = images + std * np.asarray(jax.random.normal(key, images.shape, jnp.float32))
    a_noisy = ref.taps(noisy.astype(np.float32))[tap]
    g = ref.grad_block3(a_noisy, LABELS)
    g2, g3 = g2 + g ** 2, g3 + g ** 3
  a = taps[tap]
  want = relu(wsum(a, np_gradcampp_w(a, g2 / n, g3 / n, g)))
  assert_maps_close(got, want, rtol=1e-3)
  clean = np_gradient_cam("gradcampp", a, ref.grad_block3(a, LABELS))
  assert np.abs(want - clean).max() > 1e-3 * np.abs(clean).max()  # the noise matters


def test_scorecam_matches_reference(setup):
  """On tap block2 (32 channels: 96 forward passes) to keep the numpy reference fast."""
  _, _, images, ref, taps = setup
  a = taps["block2"]
  b, h, w, c = a.shape
  masks = np_normalize(np_upsample(a.transpose(0, 3, 1, 2).reshape(b * c, h, w), SIZE, SIZE))
  masked = images[:, None] * masks.reshape(b, c, SIZE, SIZE, 1)
  probs = np_softmax(ref.logits(masked.reshape(b * c, SIZE, SIZE, 3))).reshape(b, c, -1)
  weights = probs[np.arange(b), :, LABELS]
  weights = np.where(np.ptp(a, axis=(1, 2)) > 0, weights, 0)  # constant channel: no mask
  want = relu(wsum(a, weights))
  # A chunk that does not divide the 32 channels exercises the padding.
  got = run(setup, "scorecam", tap="block2", options=dict(cams.DEFAULT_OPTIONS, scorecam_chunk=12))
  assert_maps_close(got, want, rtol=2e-4)


@pytest.mark.parametrize("tap", ["block4", "block3"])
def test_ablationcam_matches_reference(setup, tap):
  _, _, _, ref, taps = setup
  a = taps[tap]
  b, c = a.shape[0], a.shape[-1]
  tail = ref.head if tap == "block4" else ref.tail_from_block3
  y = tail(a)[np.arange(b), LABELS]
  keep = 1 - np.eye(c)
  ablated = (a[:, None] * keep[None, :, None, None, :]).reshape(b * c, *a.shape[1:])
  y_k = tail(ablated).reshape(b, c, -1)[np.arange(b), :, LABELS]
  want = relu(wsum(a, (y[:, None] - y_k) / y[:, None]))
  got = run(setup, "ablationcam", tap=tap, options=dict(cams.DEFAULT_OPTIONS, ablationcam_chunk=24))
  assert_maps_close(got, want, rtol=2e-4)


def test_ablation_head_shortcut_equals_forward_passes(setup):
  model, variables, _, _, taps = setup
  x = cam_methods._Inputs(model, variables, "block4", jnp.asarray(taps["block4"], jnp.float32),
                          jnp.asarray(LABELS), None, None, None)
  y1, d1 = cam_methods._ablation_drops(x, exact_head=True)
  y2, d2 = cam_methods._ablation_drops(x, exact_head=False)
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=1e-6)
  # Measured 1.6e-6 of the largest drop; 10x, rounded up (tests/README.md, "Tolerances").
  np.testing.assert_allclose(np.asarray(d1), np.asarray(d2), atol=2e-5 * np.abs(d2).max())


@pytest.mark.parametrize("tap", ["block4", "block1"])  # hw <= C and hw > C
def test_eigencam_matches_reference(setup, tap):
  _, _, _, ref, taps = setup
  a = taps[tap]
  b, h, w, c = a.shape
  want = []
  for x in a.reshape(b, h * w, c):
    xc = x - x.mean(axis=0)
    proj = xc @ np.linalg.svd(xc, full_matrices=False)[2][0]
    if np.corrcoef(proj, x.mean(-1))[0, 1] < 0:
      proj = -proj
    want.append(relu(proj).reshape(h, w))
  assert_maps_close(run(setup, "eigencam", tap=tap), np.stack(want), rtol=1e-3)


def test_compute_from_taps_equals_compute(setup):
  model, variables, images, _, _ = setup
  _, taps = model.apply(variables, images)
  for method in ("gradcampp", "eigencam"):
    got = cams.compute_from_taps(method, model, variables, taps, LABELS, images=images)
    np.testing.assert_allclose(np.asarray(got), run(setup, method), rtol=1e-6, atol=1e-6)


def test_errors(setup):
  model, variables, images, _, _ = setup
  with pytest.raises(ValueError, match="unknown CAM method"):
    run(setup, "nocam")
  with pytest.raises(ValueError, match="last tap"):
    run(setup, "cam", tap="block3")
  with pytest.raises(ValueError, match="rng"):
    run(setup, "smoothgradcampp")
  _, taps = model.apply(variables, images)
  with pytest.raises(ValueError, match="images="):
    cams.compute_from_taps("scorecam", model, variables, taps, LABELS)


# scorecam on block2 (32 channels: 2 chunks), ablationcam on block3 (the lax.map path).
_TAPS = {"scorecam": "block2", "ablationcam": "block3"}
_OPTIONS = dict(cams.DEFAULT_OPTIONS, smooth_samples=2, scorecam_chunk=16, ablationcam_chunk=16)


def _fn(setup, method):
  model = setup[0]
  return lambda v, x, y, k: cams.compute(method, model, v, x, y, tap=_TAPS.get(method), rng=k,
                                         options=_OPTIONS)


def _pmapped(fn):
  p = jax.pmap(fn, in_axes=(None, 0, 0, None))
  return lambda v, x, y, k: p(v, x[None], y[None], k)[0]


def test_every_method_traces_under_jit_and_pmap(setup):
  """Lowering only (no XLA compile): no concretization, no host callback."""
  _, variables, images, _, _ = setup
  key = jax.random.PRNGKey(3)
  for method in cams.METHODS:
    for transform in (jax.jit, lambda f: jax.pmap(f, in_axes=(None, 0, 0, None))):
      args = (images, LABELS) if transform is jax.jit else (images[None], LABELS[None])
      text = transform(_fn(setup, method)).lower(variables, *args, key).as_text()
      assert "callback" not in text, method


def _compiled_vs_eager(setup, method, transform):
  _, variables, images, _, _ = setup
  images, labels, key = images[:2], LABELS[:2], jax.random.PRNGKey(3)
  eager = np.asarray(_fn(setup, method)(variables, images, labels, key))
  got = np.asarray(transform(_fn(setup, method))(variables, images, labels, key))
  assert np.abs(eager).max() > 0
  # Measured max |got - eager| / max |eager|: 1.2e-5 for ablationcam (its drops y - y_k
  # cancel), <= 4.8e-7 for the others; tolerance = 10x, rounded up (tests/README.md).
  tol = 2e-4 if method == "ablationcam" else 1e-5
  np.testing.assert_allclose(got, eager, rtol=tol, atol=tol * np.abs(eager).max())


@pytest.mark.parametrize("method", ["cam", "gradcampp", "smoothgradcampp", "scorecam",
                                    "ablationcam", "eigencam"])
def test_jit_matches_eager(setup, method):
  _compiled_vs_eager(setup, method, jax.jit)


@pytest.mark.parametrize("method", ["smoothgradcampp", "scorecam"])  # scan + rng, lax.map
def test_pmap_matches_eager(setup, method):
  _compiled_vs_eager(setup, method, _pmapped)
