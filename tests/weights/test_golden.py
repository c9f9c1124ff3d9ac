"""The WSOL backbones against torchvision's numbers, without torch (docs/design.md §2).

tests/weights/golden/<arch>.npz holds what torchvision's models, made into the WSOL
variants, computed in float64 on a seeded state dict and input (`make_golden.py` is the
script and its provenance). Here the same state dict is regenerated with numpy alone
(`golden_state.py`; its sha256 must match the one stored, i.e. bit-identical), put
through fcam_jax's checkpoint conversion, loaded into the flax classifier, and every
stored tap summary and the logits are compared.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fcam_jax import models, weights
from tests.weights import golden_state
from tests.weights.test_convert import classifier_variables

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
NUM_CLASSES = 5
# max |flax - golden| / max |golden|, per stored array. Measured (float32 flax against the
# float64 torchvision golden, CPU): the largest over every tap projection, channel mean
# and the logits is 3.2e-6 for ResNet50 (proj/layer4), 2.5e-6 for VGG16 (proj/conv6),
# 1.8e-6 / 2.0e-6 for InceptionV3 (proj/Mixed_6e) on jax 0.10.2 / 0.11.2. 3e-5 leaves
# ~10x margin for other CPUs and XLA versions and stays far below what a real mistake
# gives: InceptionV3 with BN eps 1e-5 instead of 1e-3 is off by 5e-4 at its first conv
# and 1.4e-2 at Mixed_6e.
TOL = 3e-5


def _golden(arch):
  with np.load(os.path.join(GOLDEN, f"{arch}.npz"), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _regenerate(gold):
  tv = golden_state.state_dict(json.loads(str(gold["manifest"])))
  extra = golden_state.state_dict(json.loads(str(gold["extra_manifest"])))
  x = golden_state.model_input(tuple(gold["input_shape"]))
  assert golden_state.digest({**tv, **extra, "input": x}) == str(gold["state_digest"]), (
      "the numpy state dict is not bit-identical to the one the golden file was made from")
  return tv, extra, x


def _hwio(weight, bias):
  return {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)}


def _flax_outputs(arch, gold, tmp_path):
  tv, extra, x = _regenerate(gold)
  flat, report = weights.convert_state_dict(tv, arch, "golden")
  assert report.skipped == []
  assert sorted(report.ignored) == sorted(k for k in tv if k.endswith(".num_batches_tracked"))
  path = str(tmp_path / "converted.npz")
  weights.save_npz(path, flat, arch)
  variables, _ = weights.load_pretrained(path, classifier_variables(arch), arch)
  params = variables["params"]
  new = {k.rsplit(".", 1)[0] for k in extra if not k.startswith("head.")}
  for layer in new:  # VGG conv6, Inception SPG_A3_1b / 2b: not in ImageNet checkpoints
    node = params["backbone"][layer]
    if arch == "inceptionv3":
      node = node["conv"]
    node.update(_hwio(extra[f"{layer}.weight"], extra[f"{layer}.bias"]))
  params["head"]["fc"] = {"kernel": jnp.asarray(extra["head.weight"].T),
                          "bias": jnp.asarray(extra["head.bias"])}
  cfg = ml_collections.ConfigDict({"backbone": arch, "num_classes": NUM_CLASSES})
  apply = jax.jit(functools.partial(models.build_classifier(cfg).apply, train=False))
  logits, taps = apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  return np.asarray(logits, np.float64), {k: np.asarray(v, np.float64) for k, v in taps.items()}


@pytest.mark.parametrize("arch", weights.ARCHS)
def test_backbone_matches_torchvision_golden(arch, tmp_path):
  gold = _golden(arch)
  logits, taps = _flax_outputs(arch, gold, tmp_path)
  names = json.loads(str(gold["tap_names"]))  # torch's stage order
  assert list(models.backbone_class(arch).STAGES) == names and sorted(taps) == sorted(names)
  errors = {}
  for name, value in taps.items():  # (B, H, W, C)
    want = gold[f"proj/{name}"]
    assert value.shape[:3] == want.shape, (name, value.shape, want.shape)
    c = value.shape[-1]
    got = {"proj": value @ golden_state.projection(name, c),
           "chmean": value[..., np.linspace(0, c - 1, 8).round().astype(np.int64)].mean((1, 2))}
    for kind, array in got.items():
      want = gold[f"{kind}/{name}"].astype(np.float64)
      errors[f"{kind}/{name}"] = np.max(np.abs(array - want)) / np.max(np.abs(want))
  want = gold["logits"].astype(np.float64)
  errors["logits"] = np.max(np.abs(logits - want)) / np.max(np.abs(want))
  print(f"\n{arch}: max relative error {max(errors.values()):.2e} "
        f"({max(errors, key=errors.get)})")
  bad = {k: f"{v:.2e}" for k, v in errors.items() if not v <= TOL}
  assert not bad, bad


def test_golden_files_are_small_and_from_float64_torchvision():
  for arch in weights.ARCHS:
    path = os.path.join(GOLDEN, f"{arch}.npz")
    assert os.path.getsize(path) < 64 * 1024, path
    versions = json.loads(str(_golden(arch)["versions"]))
    assert versions["dtype"] == "float64" and versions["torchvision"], versions


def test_state_generator_is_seeded_by_name_and_has_the_stated_statistics():
  a = golden_state.tensor("layer1.0.conv1.weight", (64, 64, 1, 1), False)
  assert np.array_equal(a, golden_state.tensor("layer1.0.conv1.weight", (64, 64, 1, 1), False))
  assert not np.array_equal(a, golden_state.tensor("layer1.0.conv2.weight", (64, 64, 1, 1),
                                                   False))
  np.testing.assert_allclose(a.std(), np.sqrt(2 / 64), rtol=0.05)  # He
  var = golden_state.tensor("bn1.running_var", (4096,), True)
  assert var.min() >= 0.5 and var.max() < 2.0 and var.std() > 0.3
  assert golden_state.tensor("bn1.num_batches_tracked", (), True).dtype == np.int64
