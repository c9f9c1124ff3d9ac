"""The README's CUB recipe, scaled down, through the same commands a user types.

A miniature CUB_200_2011 release of synthetic images (`fcam_jax.data.cub_like`: glyph
objects, real JPEG files, the release's text files) -> `fcam_jax.data.prepare_cub` -> a randomly initialised
torchvision-layout ResNet50 state dict -> `fcam_jax.weights.convert` ->
`fcam_jax.main --config=configs/cub.py:resnet50,cam` (both stages, tiny sizes) ->
`fcam_jax.report`.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np

from fcam_jax.data import cub_like
from fcam_jax.weights import load as weights_load
from fcam_jax.models import resnet
from tests.conftest import REPO

def random_init_resnet50_state_dict(seed: int = 0):
  """torchvision's resnet50(weights=None) init rules, by name and shape, in numpy."""
  rng = np.random.default_rng(seed)
  sd = {}
  for (collection, *path), shape in sorted(weights_load.backbone_shapes("resnet50").items()):
    key = resnet.torchvision_key(path)
    leaf = path[-1]
    if leaf == "kernel":  # kaiming_normal_(mode="fan_out", relu), stored OIHW
      h, w, i, o = shape
      sd[key] = rng.normal(0, np.sqrt(2.0 / (o * h * w)), (o, i, h, w)).astype(np.float32)
    elif leaf in ("scale", "var"):
      sd[key] = np.ones(shape, np.float32)
    else:  # BN bias, running mean
      sd[key] = np.zeros(shape, np.float32)
    if key.endswith(".running_var"):
      sd[key.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
  sd["fc.weight"] = rng.normal(0, 0.01, (1000, 2048)).astype(np.float32)
  sd["fc.bias"] = np.zeros(1000, np.float32)
  return sd


def _run(*args, timeout=900):
  out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, f"{args[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
  return out.stdout


def test_cub_recipe_end_to_end(tmp_path):
  cub = tmp_path / "CUB_200_2011"
  cub_like.write_release(str(cub), num_classes=3, train_per_class=8, test_per_class=4,
                         size=(48, 48), quality=95)
  metadata = tmp_path / "metadata"
  out = _run("fcam_jax.data.prepare_cub", f"--cub_root={cub}", f"--out={metadata}",
             "--val_per_class=2")
  assert "test: 12 images" in out and "train: 18 images" in out and "val: 6 images" in out

  torch_sd = tmp_path / "resnet50_random.npz"
  np.savez(torch_sd, **random_init_resnet50_state_dict())
  weights = tmp_path / "resnet50.npz"
  out = _run("fcam_jax.weights.convert", "--arch", "resnet50", "--input", str(torch_sd),
             "--output", str(weights))
  assert "fc.weight" in out and f"wrote {weights}" in out  # the ImageNet head is reported unused

  workdir = tmp_path / "cub_resnet50_cam"
  tiny = ["--config.model.num_classes=3", "--config.data.resize_size=36",
          "--config.data.crop_size=32", "--config.data.eval_size=32",
          "--config.stage1.epochs=1", "--config.stage2.epochs=1", "--config.stage1.batch_size=8",
          "--config.stage2.batch_size=8", "--config.eval.batch_size=8",
          "--config.eval.val_interval=0.01", "--config.eval.test_interval=0.01",
          "--config.data.read_threads=1",
          "--config.fcam.crf.sigma_xy=35"]  # in 224-pixel units: 5 px at 32 px
  _run("fcam_jax.main", "--config=configs/cub.py:resnet50,cam", f"--workdir={workdir}",
       f"--config.dataset.data_root={cub / 'images'}",
       f"--config.dataset.metadata_root={metadata}", f"--config.model.pretrained={weights}",
       *tiny)
  results = json.load(open(workdir / "results.json"))
  assert results["config"]["model"]["pretrained"] == str(weights)
  assert results["stage1"]["test"]["cam"]["num_images"] == 12
  assert results["stage2"]["test"]["fcam"]["num_images"] == 12
  assert results["stage2"]["classifier_step"] == results["stage1"]["best_step"]

  report_dir = tmp_path / "report"
  md = _run("fcam_jax.report", str(workdir), f"--out={report_dir}")
  cam = results["stage2"]["test"]["cam"]["MaxBoxAcc"]
  fcam = results["stage2"]["test"]["fcam"]["MaxBoxAcc"]
  assert f"| CAM* | {cam:.1f} (71.5) |" in md  # ours, then the paper's ResNet50 CUB value
  assert f"| CAM* + F-CAM | {fcam:.1f} (90.3) |" in md
  rows = list(csv.DictReader(open(report_dir / "report.csv")))
  top1 = [r for r in rows if r["metric"] == "top1_loc" and r["fcam"] == "1"]
  assert float(top1[0]["mean"]) == round(results["stage2"]["test"]["fcam"]["top1_loc"], 4)
  assert float(top1[0]["paper"]) == 59.1
