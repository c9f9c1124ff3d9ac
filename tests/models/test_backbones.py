"""The WSOL backbones (docs/design.md §2): tap shapes, parameter counts, names, stage replay."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import models
from fcam_jax.models import inception, resnet, vgg
from fcam_jax.models.classifier import Classifier
from fcam_jax.models.inception import InceptionV3
from fcam_jax.models.resnet import ResNet50
from fcam_jax.models.small import SmallNet
from fcam_jax.models.vgg import VGG16

BACKBONES = (ResNet50, VGG16, InceptionV3)

# docs/design.md §2 at 224x224: (channels, side) of the named stages.
DESIGN_TAPS = {
    ResNet50: {"stem": (64, 112), "layer1": (256, 56), "layer2": (512, 28),
               "layer3": (1024, 28), "layer4": (2048, 28)},
    VGG16: {"block1": (64, 224), "block2": (128, 112), "block3": (256, 56),
            "block4": (512, 28), "block5": (512, 28), "conv6": (1024, 28)},
    InceptionV3: {"Conv2d_2b_3x3": (64, 112), "Conv2d_3b_1x1": (80, 57),
                  "Mixed_5c": (288, 29), "Mixed_6e": (768, 29), "SPG_A3_2b": (1024, 29)},
}
# The original U-Net's inputs: VGG's 64@224 feature is dropped by its decoder (docs/design.md §5).
DESIGN_DECODER_TAPS = {
    ResNet50: [(64, 112), (256, 56), (512, 28), (1024, 28), (2048, 28)],
    VGG16: [(128, 112), (256, 56), (1024, 28)],
    InceptionV3: [(64, 112), (80, 57), (288, 29), (768, 29), (1024, 29)],
}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def shapes224():
  """{cls: (taps, variables)} as ShapeDtypeStructs, for a (2, 224, 224, 3) input."""
  out = {}
  for cls in BACKBONES:
    model = cls()
    out[cls] = jax.eval_shape(
        lambda x, m=model: m.init_with_output(jax.random.key(0), x),
        jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  return out


@pytest.mark.parametrize("cls", BACKBONES)
def test_tap_shapes_224(cls, shapes224):
  taps, _ = shapes224[cls]
  assert set(taps) == set(cls.STAGES)  # every stage is a tap (eval_shape sorts dicts)
  for name, (c, side) in DESIGN_TAPS[cls].items():
    assert taps[name].shape == (2, side, side, c), name
  got = [(taps[n].shape[3], taps[n].shape[1]) for n in cls.DECODER_TAPS]
  assert got == DESIGN_DECODER_TAPS[cls]


@pytest.mark.parametrize("cls", BACKBONES + (SmallNet,))
def test_class_constants_consistent(cls, shapes224):
  assert set(cls.DECODER_TAPS) <= set(cls.STAGES)
  assert set(cls.CLASSIFIER_GROUP) <= set(cls.STAGES)
  # Shallowest first; the deepest decoder tap is the last stage, also the CAM layer.
  order = [cls.STAGES.index(n) for n in cls.DECODER_TAPS]
  assert order == sorted(order)
  assert cls.DECODER_TAPS[-1] == cls.STAGES[-1] == cls.CAM_TAP
  if cls in shapes224:
    taps, variables = shapes224[cls]
    assert taps[cls.CAM_TAP].shape[-1] == cls.FEATURES
    # The 10x-lr groups are top-level parameter collections of the backbone.
    for name in cls.CLASSIFIER_GROUP:
      assert name in variables["params"]
  assert models.backbone_class(
      {ResNet50: "resnet50", VGG16: "vgg16", InceptionV3: "inceptionv3",
       SmallNet: "small"}[cls]) is cls


def test_classifier_groups_match_spec():
  assert ResNet50.CLASSIFIER_GROUP == ("layer4",)
  assert VGG16.CLASSIFIER_GROUP == ("conv6",)
  assert InceptionV3.CLASSIFIER_GROUP == ("SPG_A3_1b", "SPG_A3_2b")


# --- parameter counts, from the architectures' arithmetic -------------------------------

def _conv(cin, cout, kh, kw=None, bias=False):
  return cin * cout * kh * (kh if kw is None else kw) + (cout if bias else 0)


def resnet50_counts():
  counts = {"stem": _conv(3, 64, 7) + 2 * 64}
  cin = 64
  for i, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
    n = 0
    for b in range(blocks):
      n += _conv(cin, planes, 1) + _conv(planes, planes, 3) + _conv(planes, 4 * planes, 1)
      n += 2 * (planes + planes + 4 * planes)
      if b == 0:  # projection shortcut (channels change in every first block)
        n += _conv(cin, 4 * planes, 1) + 2 * 4 * planes
      cin = 4 * planes
    counts[f"layer{i + 1}"] = n
  return counts


def vgg16_counts():
  widths = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
  counts, cin = {}, 3
  for b, ws in enumerate(widths):
    counts[f"block{b + 1}"] = 0
    for w in ws:
      counts[f"block{b + 1}"] += _conv(cin, w, 3, bias=True)
      cin = w
  counts["conv6"] = _conv(512, 1024, 3, bias=True)
  return counts


def inception_counts():
  def basic(cin, cout, kh, kw=None):
    return _conv(cin, cout, kh, kw) + 2 * cout

  def mixed_a(cin, pool):
    return (basic(cin, 64, 1) + basic(cin, 48, 1) + basic(48, 64, 5) + basic(cin, 64, 1)
            + basic(64, 96, 3) + basic(96, 96, 3) + basic(cin, pool, 1))

  def mixed_c(cin, c7):
    return (basic(cin, 192, 1) + basic(cin, c7, 1) + basic(c7, c7, 1, 7)
            + basic(c7, 192, 7, 1) + basic(cin, c7, 1) + basic(c7, c7, 7, 1)
            + basic(c7, c7, 1, 7) + basic(c7, c7, 7, 1) + basic(c7, 192, 1, 7)
            + basic(cin, 192, 1))

  return {
      "Conv2d_1a_3x3": basic(3, 32, 3), "Conv2d_2a_3x3": basic(32, 32, 3),
      "Conv2d_2b_3x3": basic(32, 64, 3), "Conv2d_3b_1x1": basic(64, 80, 1),
      "Conv2d_4a_3x3": basic(80, 192, 3),
      "Mixed_5b": mixed_a(192, 32), "Mixed_5c": mixed_a(256, 64), "Mixed_5d": mixed_a(288, 64),
      "Mixed_6a": basic(288, 384, 3) + basic(288, 64, 1) + basic(64, 96, 3) + basic(96, 96, 3),
      "Mixed_6b": mixed_c(768, 128), "Mixed_6c": mixed_c(768, 160),
      "Mixed_6d": mixed_c(768, 160), "Mixed_6e": mixed_c(768, 192),
      "SPG_A3_1b": _conv(768, 1024, 3, bias=True), "SPG_A3_2b": _conv(1024, 1024, 3, bias=True),
  }


def test_reference_counts_are_the_known_totals():
  # torchvision resnet50 (25,557,032) minus its fc (2048 * 1000 + 1000);
  # torchvision vgg16 features (14,714,688) + conv6.
  assert sum(resnet50_counts().values()) == 25_557_032 - 2_049_000 == 23_508_032
  counts = vgg16_counts()
  assert sum(counts.values()) - counts["conv6"] == 14_714_688
  assert counts["conv6"] == 4_719_616


@pytest.mark.parametrize("cls,expected", [
    (ResNet50, resnet50_counts), (VGG16, vgg16_counts), (InceptionV3, inception_counts)])
def test_parameter_counts(cls, expected, shapes224):
  params = shapes224[cls][1]["params"]
  per_stage = {name: _count(params[name]) for name in params}
  assert per_stage == expected()


@pytest.mark.parametrize("cls", [ResNet50, InceptionV3])
def test_batch_norm_layout(cls, shapes224):
  """BN: scale/bias params and mean/var stats per channel, float32."""
  variables = shapes224[cls][1]
  flat_p = flax.traverse_util.flatten_dict(variables["params"])
  flat_s = flax.traverse_util.flatten_dict(variables["batch_stats"])
  bn_scales = {k[:-1]: v.shape for k, v in flat_p.items() if k[-1] == "scale"}
  assert {k[:-1] for k in flat_s} == set(bn_scales)
  for k, v in flat_s.items():
    assert v.shape == bn_scales[k[:-1]] and v.dtype == jnp.float32


# --- torchvision names ---------------------------------------------------------------------

def _keys(variables, module):
  flat = flax.traverse_util.flatten_dict(variables)
  return {module.torchvision_key(k[1:]): v.shape for k, v in flat.items()}


def test_resnet_torchvision_names(shapes224):
  keys = _keys(shapes224[ResNet50][1], resnet)
  # 53 convs (stem 1, 16 blocks x 3, 4 projections) and 53 BNs with 4 tensors each.
  assert len(keys) == 53 + 53 * 4
  assert keys["conv1.weight"] == (7, 7, 3, 64)
  assert keys["bn1.running_var"] == (64,)
  assert keys["layer1.0.downsample.0.weight"] == (1, 1, 64, 256)
  assert keys["layer4.0.downsample.1.running_mean"] == (2048,)
  assert keys["layer2.0.conv2.weight"] == (3, 3, 128, 128)
  assert keys["layer3.5.bn3.weight"] == (1024,)
  assert "layer1.1.downsample.0.weight" not in keys


def test_vgg_torchvision_names(shapes224):
  keys = _keys(shapes224[VGG16][1], vgg)
  conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16 convs
  expected = {f"features.{i}.{p}" for i in conv_idx for p in ("weight", "bias")}
  assert set(keys) == expected | {"conv6.weight", "conv6.bias"}
  assert keys["features.0.weight"] == (3, 3, 3, 64)
  assert keys["features.28.weight"] == (3, 3, 512, 512)
  assert keys["conv6.weight"] == (3, 3, 512, 1024)


def test_inception_torchvision_names(shapes224):
  keys = _keys(shapes224[InceptionV3][1], inception)
  assert len(keys) == len(set(keys))
  assert keys["Conv2d_1a_3x3.conv.weight"] == (3, 3, 3, 32)
  assert keys["Conv2d_1a_3x3.bn.running_var"] == (32,)
  assert keys["Mixed_5b.branch5x5_2.conv.weight"] == (5, 5, 48, 64)
  assert keys["Mixed_6e.branch7x7dbl_5.conv.weight"] == (1, 7, 192, 192)
  assert keys["Mixed_6b.branch7x7_3.conv.weight"] == (7, 1, 128, 192)
  assert keys["SPG_A3_2b.1.weight"] == (3, 3, 1024, 1024)
  assert not any(k.startswith(("Mixed_7", "AuxLogits", "fc.")) for k in keys)


# --- stage replay: logits_from(tap) equals the full forward ---------------------------------

def _random_variables(model, x, seed=0):
  """Cheap random weights (numpy), random BN statistics; no flax init run."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      v = rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
    elif leaf == "var":
      v = rng.uniform(0.5, 2.0, s.shape)
    elif leaf == "scale":
      v = rng.uniform(0.5, 1.5, s.shape)
    else:
      v = rng.normal(size=s.shape) * 0.1
    return jnp.asarray(v, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("cls,size", [(SmallNet, 32), (ResNet50, 32), (InceptionV3, 32)])
def test_logits_from_every_tap_equals_full_forward(cls, size):
  model = Classifier(cls(), num_classes=5)
  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  variables = _random_variables(model, x)
  logits, taps = model.apply(variables, x)
  assert np.all(np.isfinite(logits)) and float(jnp.std(logits)) > 0
  for name in cls.STAGES:
    replay = model.apply(variables, taps[name], name, method=Classifier.logits_from)
    np.testing.assert_allclose(np.asarray(replay), np.asarray(logits), rtol=1e-5, atol=1e-6,
                               err_msg=name)


# --- dtype, BN axis name, dropout rng --------------------------------------------------------

@pytest.mark.parametrize("cls", BACKBONES)
def test_bfloat16_compute_float32_params(cls):
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.bfloat16)
  taps, variables = jax.eval_shape(
      lambda x: cls(dtype=jnp.bfloat16).init_with_output(jax.random.key(0), x), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  assert all(t.dtype == jnp.bfloat16 for t in taps.values())


@pytest.mark.parametrize("cls", [ResNet50, InceptionV3])
def test_bn_axis_name_is_used_in_training(cls):
  model = cls(bn_axis_name="batch")
  x = jax.ShapeDtypeStruct((2, 1, 32, 32, 3), jnp.float32)  # (devices, batch, ...)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x[0]), x)

  def train_step(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(0)})

  jax.eval_shape(jax.vmap(train_step, in_axes=(None, 0), axis_name="batch"), variables, x)
  with pytest.raises(NameError):  # outside the mapped axis: unbound axis name
    jax.eval_shape(lambda v, x: train_step(v, x[0]), variables, x)


def test_inception_dropout_needs_rng_in_training():
  model = InceptionV3()
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
                   variables, x)
