"""fcam_jax.report: results.json files -> the paper's Table 1 layout, Markdown and CSV."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from fcam_jax import config_lib
from fcam_jax import report
from tests.conftest import REPO


def _write_run(root, name, dataset, backbone, method, cam, fcam=None, seed=0, **config_changes):
  config = config_lib.base_config().to_dict()
  config["dataset"]["name"] = dataset
  config["model"]["backbone"] = backbone
  config["cam"]["method"] = method
  config["seed"] = seed
  for key, value in config_changes.items():
    section, leaf = key.split("__")
    config[section][leaf] = value
  results = {"config": config, "stage1": {"test": {"cam": {"num_images": 10, **cam}}}}
  if fcam is not None:
    results["stage2"] = {"test": {"cam": {"num_images": 10, **cam}, "fcam": fcam}}
  os.makedirs(os.path.join(root, name, "stage1"))
  with open(os.path.join(root, name, "results.json"), "w") as f:
    json.dump(results, f)
  # A stage's own results.json must not be taken for a run.
  with open(os.path.join(root, name, "stage1", "results.json"), "w") as f:
    json.dump({"test": {}}, f)


def test_table1_layout_means_and_paper_values(tmp_path):
  root = str(tmp_path)
  _write_run(root, "r50_cam_s0", "CUB", "resnet50", "cam", {"MaxBoxAcc": 70.0, "top1_loc": 40.0},
             {"MaxBoxAcc": 89.0, "top1_loc": 50.0}, seed=0)
  _write_run(root, "r50_cam_s1", "CUB", "resnet50", "cam", {"MaxBoxAcc": 72.0, "top1_loc": 44.0},
             {"MaxBoxAcc": 91.0, "top1_loc": 52.0}, seed=1)
  _write_run(root, "vgg_cam", "CUB", "vgg16", "cam", {"MaxBoxAcc": 60.0}, {"MaxBoxAcc": 86.0})
  _write_run(root, "inc_cam", "CUB", "inceptionv3", "cam", {"MaxBoxAcc": 57.0}, {"MaxBoxAcc": 80.0})
  _write_run(root, "r50_layercam", "CUB", "resnet50", "layercam", {"MaxBoxAcc": 84.0})
  _write_run(root, "oi", "OpenImages", "resnet50", "gradcam", {"PxAP": 60.0}, {"PxAP": 70.5})
  md, text = report.report([root], out=str(tmp_path / "out"))

  assert md.startswith("Runs: 6\n")
  lines = md.splitlines()
  i = lines.index("### CUB: MaxBoxAcc")  # the headline table comes first
  assert lines[i + 2] == "| Method | VGG16 | InceptionV3 | ResNet50 | Mean |"
  rows = {l.split(" | ")[0][2:]: l for l in lines[i + 4:i + 8]}
  # ours (paper); two seeds of ResNet50 + CAM averaged; mean over the three backbones.
  assert rows["CAM*"] == ("| CAM* | 60.0 (61.6) | 57.0 (58.8) | 71.0 (71.5) ±1.0 n=2 "
                          f"| {(60 + 57 + 71) / 3:.1f} (63.9) |")
  assert rows["CAM* + F-CAM"].startswith("| CAM* + F-CAM | 86.0 (87.3) | 80.0 (82.0) | 90.0 (90.3)")
  assert rows["LayerCAM"] == "| LayerCAM | — (84.3) | — (66.5) | 84.0 (85.2) | — (78.6) |"
  assert "### OpenImages: PxAP" in md and "| GradCAM + F-CAM | 70.5 (70.9) |" in md
  assert "### CUB: Top-1 Loc" in md and "42.0 (47.8)" in md

  rows = list(csv.DictReader(io.StringIO(text)))
  r50 = [r for r in rows if (r["dataset"], r["method"], r["fcam"], r["backbone"], r["metric"]) ==
         ("CUB", "cam", "1", "resnet50", "MaxBoxAcc")]
  assert len(r50) == 1 and float(r50[0]["mean"]) == 90.0 and r50[0]["n"] == "2"
  assert float(r50[0]["std"]) == pytest.approx(1.0) and float(r50[0]["paper"]) == 90.3
  assert open(tmp_path / "out" / "report.csv").read() == text
  assert open(tmp_path / "out" / "report.md").read() == md


def test_paper_values_are_the_published_table():
  # Spot checks against the paper's text (docs/design.md §10) and Table 1's mean column.
  assert report.paper_value("CUB", "MaxBoxAcc", "cam", False, "resnet50") == 71.5
  assert report.paper_value("CUB", "MaxBoxAcc", "cam", True, "inceptionv3") == 82.0
  assert report.paper_value("CUB", "MaxBoxAcc", "layercam", True, "resnet50") == 92.4
  assert report.paper_value("OpenImages", "PxAP", "cam", True, "vgg16") == 67.8
  for method, mean in (("gradcam", 68.2), ("gradcampp", 76.4), ("smoothgradcampp", 70.9),
                       ("layercam", 78.6)):
    row = report.PAPER[("CUB", "MaxBoxAcc")][(method, False)]
    assert row["mean"] == mean
    assert (row["vgg16"] + row["inceptionv3"] + row["resnet50"]) / 3 == pytest.approx(mean, abs=0.07)


def test_conflicting_configs_and_unfinished_runs_are_refused(tmp_path):
  root = str(tmp_path)
  _write_run(root, "a", "CUB", "resnet50", "cam", {"MaxBoxAcc": 70.0})
  _write_run(root, "b", "CUB", "resnet50", "cam", {"MaxBoxAcc": 71.0}, stage1__lr=0.1)
  with pytest.raises(report.ReportError, match="configs differ in stage1.lr"):
    report.report([root])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(report.ReportError, match="no results.json under it"):
    report.report([str(tmp_path / "empty")])
  (tmp_path / "bad.json").write_text('{"config": {"dataset": {"name": "CUB"}}}')
  with pytest.raises(report.ReportError, match="bad.json: no config.model.backbone"):
    report.report([str(tmp_path / "bad.json")])


def test_command_line(tmp_path):
  _write_run(str(tmp_path), "r", "CUB", "resnet50", "gradcam", {"MaxBoxAcc": 73.0},
             {"MaxBoxAcc": 90.0})
  out = subprocess.run([sys.executable, "-m", "fcam_jax.report", str(tmp_path),
                        "--metrics=MaxBoxAcc"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert "| GradCAM + F-CAM | 90.0 (90.5) |" in out.stdout and "PxAP" not in out.stdout
  out = subprocess.run([sys.executable, "-m", "fcam_jax.report", str(tmp_path / "nope")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "nope: no such file or directory" in out.stderr


def test_the_same_run_twice_is_refused_or_counted_once(tmp_path):
  root = str(tmp_path / "runs")
  _write_run(root, "s0", "CUB", "resnet50", "cam", {"MaxBoxAcc": 70.0}, {"MaxBoxAcc": 89.0},
             seed=0)
  _write_run(root, "s1", "CUB", "resnet50", "cam", {"MaxBoxAcc": 72.0}, {"MaxBoxAcc": 91.0},
             seed=1)
  # A copy of s0 elsewhere, its data paths rewritten (another machine): still the same run.
  copy = str(tmp_path / "elsewhere" / "s0_copy")
  shutil.copytree(os.path.join(root, "s0"), copy)
  with open(os.path.join(copy, "results.json")) as f:
    results = json.load(f)
  results["config"]["dataset"]["data_root"] = "/mnt/other/images"
  with open(os.path.join(copy, "results.json"), "w") as f:
    json.dump(results, f)
  s0, dup = os.path.join(root, "s0", "results.json"), os.path.join(copy, "results.json")
  with pytest.raises(report.MixedRunsError) as info:
    report.report([root, copy])
  assert f"{dup} is the same run as {s0} (same config and seed 0" in str(info.value)

  md, text = report.report([root, copy], allow_duplicates=True)
  assert md.startswith(f"Runs: 2 (1 duplicate counted once: {dup} = {s0})\n")
  assert "| CAM* + F-CAM | 90.0 (90.3) ±1.0 n=2 |" in md  # two seeds, the copy not counted
  # Two seeds stay two runs; one file reached by two paths is one file.
  md, _ = report.report([root, os.path.join(root, "s1", "results.json")])
  assert md.startswith("Runs: 2\n") and "±1.0 n=2" in md

  r = subprocess.run([sys.executable, "-m", "fcam_jax.report", root, copy], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
  assert r.stderr.splitlines()[-1].startswith(f"error: {dup} is the same run as {s0}")
  r = subprocess.run([sys.executable, "-m", "fcam_jax.report", root, copy,
                      "--allow_duplicates", "--metrics=MaxBoxAcc"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert "1 duplicate counted once" in r.stdout and "n=2" in r.stdout and "n=3" not in r.stdout
