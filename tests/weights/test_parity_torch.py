"""Numerical parity with torchvision: a converted checkpoint gives the same features.

Each torchvision model (random weights, BatchNorm in eval mode with random running
stats) is modified into the WSOL variant of docs/design.md §2 here, in torch; its state dict is
saved as .pth and .safetensors, converted, loaded into the flax classifier, and every
stage output (tap) and the logits of a linear head are compared on one input.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fcam_jax import models, weights
from fcam_jax.weights import convert
from fcam_jax.weights.state_dict import PretrainedError
from tests.weights import test_convert
from tests.weights.test_convert import classifier_variables, write_safetensors

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from tests.weights import torch_wsol  # pylint: disable=g-import-not-at-top,wrong-import-position

# max |flax - torch| / max |torch| per tap (float32).
TOL = 1e-4
NUM_CLASSES = 5


def _calibrate_bn(model, forward, gen):
  """Random BN: running stats from one train-mode batch (keeps activations O(1)), perturbed."""
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.reset_running_stats()
    m.momentum = 1.0  # running stats := this batch's stats
  model.train()
  with torch.no_grad():
    forward(torch.randn(2, 3, 112, 112, generator=gen))
    for m in bns:
      c = m.num_features
      m.running_mean += 0.2 * torch.randn(c, generator=gen) * m.running_var.sqrt()
      m.running_var *= 0.5 + 1.5 * torch.rand(c, generator=gen)
      m.weight.copy_(0.5 + torch.rand(c, generator=gen))
      m.bias.copy_(0.2 * torch.randn(c, generator=gen))
      m.momentum = 0.1
  model.eval()


def _build(arch, gen):
  """The torch WSOL model; its new layers drawn from `gen` (named as flax's params)."""
  model, forward, new_layers = torch_wsol.BUILD[arch]()
  with torch.no_grad():
    for conv in new_layers.values():
      conv.weight.normal_(0, (2 / (9 * conv.in_channels)) ** 0.5, generator=gen)
      conv.bias.normal_(0, 0.1, generator=gen)
  if arch == "inceptionv3":
    new_layers = {f"{k}/conv": v for k, v in new_layers.items()}
  return model, forward, new_layers


def _hwio(conv):
  return {"kernel": jnp.asarray(conv.weight.detach().permute(2, 3, 1, 0).numpy()),
          "bias": jnp.asarray(conv.bias.detach().numpy())}


EXPECTED_SKIPPED = {"resnet50": {"fc"}, "vgg16": {"classifier"},
                    "inceptionv3": {"fc", "AuxLogits", "Mixed_7a", "Mixed_7b", "Mixed_7c"}}
FIGURES = {}


@pytest.mark.parametrize("arch", weights.ARCHS)
def test_parity_with_torchvision(arch, tmp_path):
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  model, forward, new_layers = _build(arch, gen)
  _calibrate_bn(model, forward, gen)
  head = torch.nn.Linear(models.backbone_class(arch).FEATURES, NUM_CLASSES)
  x = torch.randn(2, 3, 224, 224, generator=gen)
  with torch.no_grad():
    ref = forward(x)
    last = ref[models.backbone_class(arch).STAGES[-1]]
    ref_logits = head(last.mean((2, 3))).numpy()

  # The ImageNet-layout state dict, saved both ways and converted.
  sd = model.state_dict()
  pth, st = str(tmp_path / "w.pth"), str(tmp_path / "w.safetensors")
  torch.save(sd, pth)
  write_safetensors(st, {k: v.numpy() for k, v in sd.items()})
  outs = {}
  for src in (pth, st):
    outs[src] = str(tmp_path / f"{src.rsplit('.', 1)[1]}.npz")
    assert convert.main(["--arch", arch, "--input", src, "--output", outs[src]]) == 0
  a, b = (np.load(outs[s]) for s in (pth, st))
  assert sorted(a.files) == sorted(b.files)
  assert all(np.array_equal(a[k], b[k]) for k in a.files)

  _, report = weights.convert_state_dict({k: v.numpy() for k, v in sd.items()}, arch)
  assert {k.split(".")[0] for k in report.skipped} == EXPECTED_SKIPPED[arch]

  variables, report = weights.load_pretrained(outs[pth], classifier_variables(arch), arch)
  params = variables["params"]
  for path, conv in new_layers.items():  # new layers start random: copy torch's
    node = params["backbone"]
    for p in path.split("/")[:-1]:
      node = node[p]
    node[path.split("/")[-1]] = _hwio(conv)
  params["head"]["fc"] = {"kernel": jnp.asarray(head.weight.detach().numpy().T),
                          "bias": jnp.asarray(head.bias.detach().numpy())}

  cfg = ml_collections.ConfigDict({"backbone": arch, "num_classes": NUM_CLASSES})
  apply = jax.jit(functools.partial(models.build_classifier(cfg).apply, train=False))
  logits, taps = apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))

  assert set(taps) == set(ref)
  figures = {}
  for name, want in ref.items():
    want = want.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(taps[name])
    assert got.shape == want.shape, name
    diff = float(np.max(np.abs(got - want)))
    figures[name] = (diff, float(np.max(np.abs(want))))
  diff = float(np.max(np.abs(np.asarray(logits) - ref_logits)))
  figures["logits"] = (diff, float(np.max(np.abs(ref_logits))))
  FIGURES[arch] = figures
  print(f"\n{arch}: max |flax - torch| (max |torch|)")
  for name, (d, scale) in figures.items():
    print(f"  {name:14s} {d:.3e} ({scale:.3e}) rel {d / scale:.2e}")
  bad = {n: d / s for n, (d, s) in figures.items() if not d <= TOL * s}
  assert not bad, bad


def test_unsafe_pth_refused(tmp_path):
  path = str(tmp_path / "evil.pth")
  torch.save({"conv1.weight": torch.zeros(1), "x": test_convert._Evil()}, path)
  with pytest.raises(PretrainedError, match="weights_only"):
    weights.read_state_dict(path)
  assert not test_convert._MARKER  # pylint: disable=protected-access


def test_pth_bf16_and_wrapped(tmp_path):
  sd = {"a": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
        "n": torch.tensor(3, dtype=torch.int64)}
  path = str(tmp_path / "w.pth")
  torch.save({"state_dict": sd, "epoch": 3}, path)
  got = weights.read_state_dict(path)
  assert got["a"].dtype == np.float32
  np.testing.assert_array_equal(got["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
  assert got["n"] == 3
