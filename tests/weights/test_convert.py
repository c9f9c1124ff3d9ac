"""Checkpoint import without torch: synthetic torchvision state dicts, readers, errors."""

import json
import os
import struct
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest

from fcam_jax import models, weights
from fcam_jax.models import inception, resnet, vgg
from fcam_jax.weights import convert, state_dict
from fcam_jax.weights.state_dict import PretrainedError
from tests.conftest import REPO

TV_KEY = {"resnet50": resnet.torchvision_key, "vgg16": vgg.torchvision_key,
          "inceptionv3": inception.torchvision_key}
NEW = {"resnet50": (), "vgg16": ("conv6",), "inceptionv3": ("SPG_A3_1b", "SPG_A3_2b")}
# Source keys of torchvision's ImageNet models that the WSOL backbones do not use.
EXTRA = {
    "resnet50": {"fc.weight": (1000, 2048), "fc.bias": (1000,)},
    "vgg16": {"classifier.0.weight": (16, 8), "classifier.6.bias": (1000,)},
    "inceptionv3": {"fc.weight": (4, 8), "AuxLogits.conv0.conv.weight": (128, 768, 1, 1),
                    "Mixed_7a.branch3x3_1.conv.weight": (192, 768, 1, 1),
                    "Mixed_7c.branch_pool.bn.running_mean": (192,)},
}
# A few torchvision names and shapes, written out by hand (torch layout).
KNOWN = {
    "resnet50": {"conv1.weight": (64, 3, 7, 7), "layer4.2.conv3.weight": (2048, 512, 1, 1),
                 "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
                 "layer2.0.downsample.1.running_var": (512,)},
    "vgg16": {"features.0.weight": (64, 3, 3, 3), "features.28.weight": (512, 512, 3, 3),
              "features.24.bias": (512,), "features.17.weight": (512, 256, 3, 3)},
    "inceptionv3": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
                    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
                    "Mixed_5b.branch_pool.bn.running_mean": (32,)},
}


def _torch_shape(leaf, shape):
  if leaf == "kernel":  # HWIO -> OIHW
    h, w, i, o = shape
    return (o, i, h, w)
  return shape


def _pattern(index, shape):
  """Integer-valued floats, exact in float32, distinct within a tensor and across tensors."""
  n = int(np.prod(shape))
  return ((np.arange(n, dtype=np.int64) * 7919 + index * 104729) % (1 << 23)
          ).astype(np.float32).reshape(shape)


def fake_state_dict(arch):
  """(torchvision-named state dict, {flax name: expected HWIO/flat value}, bn count)."""
  shapes = weights.backbone_shapes(arch)
  sd, expected, n_bn = {}, {}, 0
  for index, ((collection, *path), shape) in enumerate(sorted(shapes.items())):
    if path[0] in NEW[arch]:
      continue
    key = TV_KEY[arch](path)
    value = _pattern(index, _torch_shape(path[-1], shape))
    sd[key] = value
    name = "/".join([collection, *path])
    expected[name] = np.einsum("oihw->hwio", value) if value.ndim == 4 else value
    if key.endswith(".running_var"):
      sd[key.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
      n_bn += 1
  for key, shape in EXTRA[arch].items():
    sd[key] = np.ones(shape, np.float32)
  return sd, expected, n_bn


def classifier_variables(arch, fill=-1.0):
  """A classifier's variables (eval_shape, then constant): stand-in for a fresh init."""
  cfg = ml_collections.ConfigDict({"backbone": arch, "num_classes": 5})
  model = models.build_classifier(cfg)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  return jax.tree.map(lambda s: jnp.full(s.shape, fill, s.dtype), flax.core.unfreeze(shapes))


def write_safetensors(path, tensors, dtypes=None):
  """A .safetensors file from numpy, written from the format's description."""
  dtypes = dtypes or {}
  header, chunks, offset = {}, [], 0
  for key, value in tensors.items():
    value = np.asarray(value)
    dt = dtypes.get(key) or {"float32": "F32", "float16": "F16", "int64": "I64"}[value.dtype.name]
    np_dtype = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "BF16": ml_dtypes.bfloat16}[dt]
    raw = value.astype(np_dtype).tobytes()
    header[key] = {"dtype": dt, "shape": list(value.shape),
                   "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  header["__metadata__"] = {"format": "pt"}
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for chunk in chunks:
      f.write(chunk)


def _flat(variables):
  return flax.traverse_util.flatten_dict(variables, sep="/")


@pytest.mark.parametrize("arch", weights.ARCHS)
def test_round_trip_every_value_lands(arch, tmp_path, capsys):
  sd, expected, n_bn = fake_state_dict(arch)
  for key, shape in KNOWN[arch].items():
    assert sd[key].shape == shape, key
  src, out = str(tmp_path / "src.npz"), str(tmp_path / "out.npz")
  np.savez(src, **sd)
  assert convert.main(["--arch", arch, "--input", src, "--output", out]) == 0
  printed = capsys.readouterr().out
  for key in EXTRA[arch]:
    assert f"  {key}\n" in printed
  assert f"{len(expected)} tensors mapped, {n_bn} num_batches_tracked ignored" in printed

  before = classifier_variables(arch)
  loaded, report = weights.load_pretrained(out, before, arch)
  got, old = _flat(loaded), _flat(before)
  assert got.keys() == old.keys()
  n_loaded = 0
  for name, value in got.items():
    collection, scope, *path = name.split("/")
    if scope == "backbone" and path[0] not in NEW[arch]:
      np.testing.assert_array_equal(value, expected["/".join([collection, *path])], name)
      n_loaded += 1
    else:  # head and new layers: untouched
      np.testing.assert_array_equal(value, old[name], name)
  assert n_loaded == len(expected) == len(report.mapped)
  assert sorted(report.left_at_init) == sorted(
      k for k in got if k.split("/")[1] == "head" or k.split("/")[2] in NEW[arch])
  # The input variables are not modified.
  assert all(np.all(v == -1) for v in jax.tree.leaves(before))


@pytest.mark.parametrize("arch", weights.ARCHS)
def test_report_lists_skipped_and_new(arch):
  sd, expected, n_bn = fake_state_dict(arch)
  flat, report = weights.convert_state_dict(sd, arch, "fake")
  assert flat.keys() == expected.keys()
  assert sorted(report.skipped) == sorted(EXTRA[arch])
  assert len(report.ignored) == n_bn
  assert all(k.startswith(tuple(f"params/{m}/" for m in NEW[arch])) for k in report.left_at_init)
  assert len(report.left_at_init) == 2 * len(NEW[arch])  # kernel + bias each
  assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in flat.values())


def test_safetensors_reader_dtypes(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a": rng.normal(size=(3, 4, 2, 2)).astype(np.float32),
             "b": rng.normal(size=(5,)).astype(np.float16),
             "c": rng.normal(size=(2, 3)).astype(np.float32),
             "d": np.array(12345678901, np.int64), "e": np.zeros((0, 3), np.float32)}
  path = str(tmp_path / "t.safetensors")
  write_safetensors(path, tensors, {"c": "BF16"})
  got = weights.read_state_dict(path)
  assert got.keys() == tensors.keys()
  np.testing.assert_array_equal(got["a"], tensors["a"])
  assert got["b"].dtype == np.float32
  np.testing.assert_array_equal(got["b"], tensors["b"].astype(np.float32))
  np.testing.assert_array_equal(
      got["c"], tensors["c"].astype(ml_dtypes.bfloat16).astype(np.float32))
  assert got["d"].dtype == np.int64 and got["d"].shape == () and got["d"] == 12345678901
  assert got["e"].shape == (0, 3)


def test_safetensors_corrupt(tmp_path):
  path = str(tmp_path / "bad.safetensors")
  write_safetensors(path, {"a": np.ones((4, 4), np.float32)})
  data = bytearray(open(path, "rb").read())
  with open(path, "wb") as f:  # truncate the data buffer
    f.write(data[:-8])
  with pytest.raises(PretrainedError, match="'a'.*data_offsets"):
    weights.read_state_dict(path)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 1 << 40) + b"{}")
  with pytest.raises(PretrainedError, match="header"):
    weights.read_state_dict(path)


def test_safetensors_input_equals_npz_input(tmp_path):
  sd, expected, _ = fake_state_dict("vgg16")
  path = str(tmp_path / "vgg.safetensors")
  write_safetensors(path, sd)
  variables = classifier_variables("vgg16")
  # A torchvision file straight into load_pretrained: converted on the fly.
  loaded, report = weights.load_pretrained(path, variables, "vgg16")
  got = _flat(loaded)
  for name, value in expected.items():
    collection, path_ = name.split("/", 1)
    np.testing.assert_array_equal(got[f"{collection}/backbone/{path_}"], value)
  assert ("features.28.weight", "params/backbone/block5/conv3/kernel") in report.mapped


def test_real_init_keeps_head_and_conv6(tmp_path):
  sd, expected, _ = fake_state_dict("vgg16")
  path = str(tmp_path / "vgg.npz")
  flat, _ = weights.convert_state_dict(sd, "vgg16")
  weights.save_npz(path, flat, "vgg16")
  model = models.build_classifier(ml_collections.ConfigDict({"backbone": "vgg16",
                                                             "num_classes": 3}))
  # rbg: the same init, without threefry's cost for VGG's 19M random numbers on CPU.
  variables = model.init(jax.random.key(1, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
  loaded, _ = weights.load_pretrained(path, variables, "vgg16")
  for scope in (("head",), ("backbone", "conv6")):
    a = jax.tree.leaves(_sub(loaded["params"], scope))
    b = jax.tree.leaves(_sub(variables["params"], scope))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
  np.testing.assert_array_equal(loaded["params"]["backbone"]["block1"]["conv1"]["bias"],
                                sd["features.0.bias"])
  logits, _ = model.apply(loaded, jnp.ones((1, 32, 32, 3)))
  assert logits.shape == (1, 3)


def _sub(tree, scope):
  for s in scope:
    tree = tree[s]
  return tree


def test_shape_mismatch_names_key_and_shapes(tmp_path):
  sd, _, _ = fake_state_dict("resnet50")
  sd["layer2.1.conv2.weight"] = np.zeros((128, 128, 1, 3), np.float32)
  with pytest.raises(PretrainedError, match=r"layer2\.1\.conv2\.weight.*\(128, 128, 1, 3\)"
                     r".*\(128, 128, 3, 3\)"):
    weights.convert_state_dict(sd, "resnet50", "f.pth")


def test_missing_key_is_named():
  sd, _, _ = fake_state_dict("inceptionv3")
  del sd["Mixed_6c.branch7x7_2.bn.running_var"]
  with pytest.raises(PretrainedError, match=r"Mixed_6c\.branch7x7_2\.bn\.running_var"):
    weights.convert_state_dict(sd, "inceptionv3")


@pytest.mark.parametrize("source,target", [("resnet50", "vgg16"), ("vgg16", "inceptionv3"),
                                           ("inceptionv3", "resnet50")])
def test_wrong_arch(source, target):
  sd, _, _ = fake_state_dict(source)
  with pytest.raises(PretrainedError, match=f"missing.*torchvision {target}"):
    weights.convert_state_dict(sd, target)


def test_extra_backbone_keys_refused():
  # e.g. a deeper ResNet: every resnet50 key is there, plus blocks resnet50 lacks.
  sd, _, _ = fake_state_dict("resnet50")
  sd["layer3.6.conv1.weight"] = np.zeros((256, 1024, 1, 1), np.float32)
  with pytest.raises(PretrainedError, match=r"layer3\.6\.conv1\.weight"):
    weights.convert_state_dict(sd, "resnet50")


def test_converted_npz_for_other_arch_refused(tmp_path):
  sd, _, _ = fake_state_dict("vgg16")
  path = str(tmp_path / "vgg.npz")
  weights.save_npz(path, weights.convert_state_dict(sd, "vgg16")[0], "vgg16")
  with pytest.raises(PretrainedError, match="converted for 'vgg16'"):
    weights.load_pretrained(path, classifier_variables("resnet50"), "resnet50")


def test_load_shape_mismatch_names_file_and_key(tmp_path):
  sd, _, _ = fake_state_dict("vgg16")
  path = str(tmp_path / "vgg.npz")
  flat, _ = weights.convert_state_dict(sd, "vgg16")
  flat["params/block3/conv2/bias"] = np.zeros((7,), np.float32)
  weights.save_npz(path, flat, "vgg16")
  with pytest.raises(PretrainedError, match=r"vgg\.npz.*params/block3/conv2/bias.*\(7,\)"):
    weights.load_pretrained(path, classifier_variables("vgg16"), "vgg16")
  del flat["params/block3/conv2/bias"]
  weights.save_npz(path, flat, "vgg16")
  with pytest.raises(PretrainedError, match=r"missing.*block3/conv2/bias"):
    weights.load_pretrained(path, classifier_variables("vgg16"), "vgg16")


def test_missing_file_and_unknown_backbone(tmp_path):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    weights.load_pretrained(missing, {}, "resnet50")
  with pytest.raises(SystemExit) as info:  # a flag naming nothing: a usage error
    convert.main(["--arch", "vgg16", "--input", missing, "--output", missing])
  assert info.value.code == 2
  with pytest.raises(PretrainedError, match="'small'"):
    weights.convert_state_dict({}, "small")


_MARKER = []


def _evil():
  _MARKER.append("ran")
  return 0


class _Evil:
  def __reduce__(self):
    return (_evil, ())


def test_pickled_npz_refused(tmp_path):
  path = str(tmp_path / "evil.npz")
  np.savez(path, **{"features.0.weight": np.array([_Evil()], dtype=object)})
  with pytest.raises(PretrainedError, match="refusing to unpickle"):
    weights.read_state_dict(path)
  with pytest.raises(PretrainedError, match="refusing to unpickle"):
    weights.load_pretrained(path, {}, "vgg16")
  assert not _MARKER


def test_pth_without_torch(tmp_path, monkeypatch):
  path = str(tmp_path / "w.pth")
  open(path, "wb").close()
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(PretrainedError, match="needs torch"):
    weights.read_state_dict(path)


def test_cli_module_entry_point(tmp_path):
  sd, expected, _ = fake_state_dict("vgg16")
  src, out = str(tmp_path / "vgg.safetensors"), str(tmp_path / "vgg.npz")
  write_safetensors(src, sd)
  proc = subprocess.run(
      [sys.executable, "-W", "error::RuntimeWarning", "-m", "fcam_jax.weights.convert",
       "--arch", "vgg16", "--input", src, "--output", out],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert "classifier.0.weight" in proc.stdout and "params/conv6/kernel" in proc.stdout
  got = state_dict.read_npz(out)
  assert str(got.pop("__arch__")) == "vgg16"
  assert got.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value)
