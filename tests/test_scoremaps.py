"""config.eval.save_scoremaps: a run's test maps, re-scored by evaluate_scoremaps, give
the run's own test metrics (a miniature CUB release, both stages, the small backbone)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fcam_jax import evaluate_scoremaps
from fcam_jax import train
from fcam_jax.data import cub_like
from fcam_jax.data import metadata
from fcam_jax.data import prepare_cub
from tests.conftest import REPO, tiny_config

# Metrics that need the logits (not in a score map) are not re-scored.
NEEDS_LOGITS = ("top1_loc", "top5_loc", "top1_cls", "top5_cls", "best_tau_top1_loc",
                "best_tau_top5_loc", "curve_top1_loc", "curve_top5_loc")


@pytest.fixture(scope="module")
def cub_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("scoremaps")
  cub, meta, workdir = (str(root / d) for d in ("CUB_200_2011", "metadata", "run"))
  cub_like.write_release(cub, num_classes=3, train_per_class=6, test_per_class=4,
                         size=(48, 40), quality=95)
  prepare_cub.convert(cub, meta, val_per_class=1)
  config = tiny_config(str(root), **{
      "dataset.name": "CUB", "dataset.data_root": os.path.join(cub, "images"),
      "dataset.metadata_root": meta, "model.num_classes": 3, "stage1.epochs": 1,
      "stage1.batch_size": 8, "stage2.batch_size": 8, "eval.num_figures": 0,
      "eval.save_scoremaps": True})
  return meta, workdir, config, train.train_and_evaluate(config, workdir)


def _rescored(results, computed):
  return {k: v for k, v in results.items() if k not in NEEDS_LOGITS}, {
      k: v for k, v in computed.items() if not k.startswith("localization")}


def test_saved_maps_are_the_scored_maps_in_wsolevaluation_layout(cub_run):
  meta, workdir, config, results = cub_run
  ids = [r.image_id for r in metadata.read_split("CUB", meta, "test", check_files=False)]
  assert len(ids) == 12
  for stage, names in (("stage1", ["cam"]), ("stage2", ["cam", "fcam"])):
    saved = results[stage]["scoremaps"]
    assert saved == {"map_size": 32, "folders": {
        n: os.path.join(stage, "scoremaps", n) for n in names}}
    for name in names:
      folder = os.path.join(workdir, saved["folders"][name])
      files = sorted(os.path.relpath(p, folder)
                     for p in glob.glob(os.path.join(folder, "**", "*.npy"), recursive=True))
      assert files == sorted(i + ".npy" for i in ids)  # each image once
      scoremap = np.load(os.path.join(folder, files[0]))
      assert scoremap.dtype == np.float32 and scoremap.shape == (32, 32)
      assert 0.0 <= scoremap.min() and scoremap.max() <= 1.0
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["stage2"]["scoremaps"] == results["stage2"]["scoremaps"]


def test_stage1_cam_rescored_in_process(cub_run):
  meta, workdir, config, results = cub_run
  folder = os.path.join(workdir, results["stage1"]["scoremaps"]["folders"]["cam"])
  computed = evaluate_scoremaps.evaluate("CUB", meta, folder, "test",
                                         cam_curve_interval=config.eval.test_interval,
                                         map_size=config.data.eval_size)
  expected, got = _rescored(results["stage1"]["test"]["cam"], computed)
  assert got == expected


@pytest.mark.parametrize("name", ["cam", "fcam"])
def test_command_rescores_stage2_maps_to_the_run_numbers(cub_run, name, tmp_path):
  meta, workdir, config, results = cub_run
  scoremaps = results["stage2"]["scoremaps"]
  output = str(tmp_path / "metrics.json")
  proc = subprocess.run(
      [sys.executable, "-m", "fcam_jax.evaluate_scoremaps", f"--metadata_root={meta}",
       f"--scoremap_root={os.path.join(workdir, scoremaps['folders'][name])}", "--dataset=CUB",
       f"--cam_curve_interval={config.eval.test_interval}",
       f"--map_size={scoremaps['map_size']}", f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  run = results["stage2"]["test"][name]
  rows = {cells[0]: cells[1:] for cells in (
      [c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines()
      if line.startswith("| "))}
  assert rows["MaxBoxAcc"] == [f"{run['MaxBoxAcc']:.2f}", f"{run['best_tau_MaxBoxAcc']:.3f}"]
  with open(output) as f:
    computed = json.load(f)
  expected, got = _rescored(run, computed)
  assert {k: got[k] for k in expected} == expected
  assert got["num_images"] == 12
