"""Writes tests/weights/golden/<arch>.npz: torchvision's WSOL backbones on seeded weights.

The provenance of the golden files that `test_golden.py` checks fcam_jax against in CI,
without torch. For each backbone of docs/design.md §2 (ResNet50 with layer3/layer4 at
stride 1; VGG16 without pool4/pool5, plus conv6 3x3 512->1024 + ReLU; InceptionV3 up to
Mixed_6e with every 3x3 conv and stem max-pool padded 1 (pools ceil mode), Mixed_6a at
stride 1, plus SPG_A3_1b/2b), this script

1. builds torchvision's ImageNet model and modifies it into the WSOL variant, in torch;
2. fills it with the numpy-generated state dict of `golden_state.py` (torchvision's keys
   and shapes, less the ImageNet head and the unused blocks; random BatchNorm running
   statistics), plus the new layers and a 5-class linear head on the pooled last map;
3. runs it in float64 (so the golden numbers are the exact function up to ~1e-15, and
   the CI tolerance measures fcam_jax's float32 error only) in eval mode on a seeded
   2x3x64x48 input (small: CI time; not square: H and W cannot be confused);
4. stores, per tap (every stage output of the flax backbone), the projection of the
   channels on a seeded direction at every pixel (B,H,W) and the spatial means of 8
   evenly spaced channels (B,8); the logits; torchvision's key list and shapes (the CI
   test regenerates the state dict from them, so it needs no torch); and a sha256 of
   the generated arrays (the CI test checks its regeneration is bit-identical).

Command, from the repository root (Python 3.11, CPU):

  python -m venv venv_torch
  venv_torch/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
  venv_torch/bin/python tests/weights/make_golden.py

Last run with torch 2.14.1+cu130 (CPU), torchvision 0.29.1+cu130, numpy 2.4.6; the
versions are also stored in each file (`versions`).

Imports numpy, torch, torchvision, torch_wsol (the torch models, shared with
test_parity_torch.py) and golden_state (numpy only).
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_state  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch_wsol import BUILD  # pylint: disable=g-import-not-at-top,wrong-import-position

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
INPUT_SHAPE = (2, 3, 64, 48)  # N, C, H, W
NUM_CLASSES = 5
CHANNEL_MEANS = 8
# ImageNet-model parts the WSOL backbones do not have (docs/design.md §2).
DROPPED = {"resnet50": ("fc.",), "vgg16": ("classifier.",),
           "inceptionv3": ("fc.", "AuxLogits.", "Mixed_7a.", "Mixed_7b.", "Mixed_7c.")}
FEATURES = {"resnet50": 2048, "vgg16": 1024, "inceptionv3": 1024}


def manifest(module, skip=()):
  return [[k, list(v.shape)] for k, v in module.state_dict().items() if not k.startswith(skip)]


def golden(arch):
  model, forward, new_layers = BUILD[arch]()
  head = torch.nn.Linear(FEATURES[arch], NUM_CLASSES)
  tv = manifest(model, DROPPED[arch])
  extra = [[f"{name}.{k}", s] for name, layer in new_layers.items() for k, s in manifest(layer)]
  extra += [[f"head.{k}", s] for k, s in manifest(head)]
  tv_sd = golden_state.state_dict(tv)
  extra_sd = golden_state.state_dict(extra)
  x = golden_state.model_input(INPUT_SHAPE)

  loaded = model.load_state_dict({k: torch.from_numpy(v) for k, v in tv_sd.items()},
                                 strict=False)
  assert not loaded.unexpected_keys, loaded.unexpected_keys
  assert all(k.startswith(DROPPED[arch]) for k in loaded.missing_keys), loaded.missing_keys
  for name, layer in list(new_layers.items()) + [("head", head)]:
    layer.load_state_dict({k.split(".", 1)[1]:
                           torch.from_numpy(v) for k, v in extra_sd.items()
                           if k.startswith(f"{name}.")}, strict=True)
  modules = [model, head, *new_layers.values()]
  for mod in modules:
    mod.double().eval()
  with torch.no_grad():
    taps = forward(torch.from_numpy(x).double())
    logits = head(taps[list(taps)[-1]].mean((2, 3)))

  out = {
      "manifest": np.array(json.dumps(tv)),
      "extra_manifest": np.array(json.dumps(extra)),
      "input_shape": np.array(INPUT_SHAPE, np.int64),
      "state_digest": np.array(golden_state.digest({**tv_sd, **extra_sd, "input": x})),
      "tap_names": np.array(json.dumps(list(taps))),
      "logits": logits.numpy().astype(np.float32),
      "versions": np.array(json.dumps({"torch": torch.__version__,
                                       "torchvision": torchvision.__version__,
                                       "numpy": np.__version__, "dtype": "float64"})),
  }
  for name, value in taps.items():
    value = value.numpy()  # (B, C, H, W) float64
    c = value.shape[1]
    out[f"proj/{name}"] = np.einsum("bchw,c->bhw", value,
                                    golden_state.projection(name, c)).astype(np.float32)
    idx = np.linspace(0, c - 1, CHANNEL_MEANS).round().astype(np.int64)
    out[f"chmean/{name}"] = value[:, idx].mean((2, 3)).astype(np.float32)
    print(f"  {arch} {name:14s} {tuple(value.shape)} max |x| {np.abs(value).max():.3g}")
  return out


def main():
  os.makedirs(OUT, exist_ok=True)
  torch.set_num_threads(2)
  for arch in BUILD:
    path = os.path.join(OUT, f"{arch}.npz")
    np.savez_compressed(path, **golden(arch))
    print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
  main()
