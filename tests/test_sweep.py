"""fcam_jax.sweep: variants into their own workdirs, one shared classifier, resume, table."""

import json
import os
import subprocess
import sys

import pytest

from fcam_jax import config_lib
from fcam_jax import sweep
from tests.conftest import REPO, tiny_config

SWEEP_FILE = '''
def get_sweep(arg=None):
  return [{"name": "no_crf", "fcam.crf.enabled": False},
          {"name": "crf", "fcam.crf.enabled": True}]
'''


def test_product_and_axis():
  grid = config_lib.product(config_lib.axis("a", [1, 2]), config_lib.axis("b", ["x", "y", "z"]))
  assert grid == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]
  assert sweep.variant_name({"fcam.seeds.n_minus": 0.3}) == "fcam.seeds.n_minus=0.3"
  assert sweep.variant_name({"name": "a/b c"}) == "a_b_c"


def test_shipped_sweeps_load_and_apply(data_dir):
  config = tiny_config(data_dir)
  loss_terms = sweep.load_sweep(os.path.join(REPO, "configs/sweeps/loss_terms.py"))
  terms = {(v["fcam.crf.enabled"], v["fcam.size.enabled"]) for v in loss_terms}
  assert terms == {(False, False), (False, True), (True, False), (True, True)}
  jobs = sweep.plan(config, loss_terms, "/w")
  assert jobs[0]["name"] == "classifier" and jobs[0]["config"].stages == "stage1"
  for job, v in zip(jobs[1:], loss_terms):
    assert job["config"].stages == "stage2"
    assert job["config"].stage2.classifier_checkpoint == "/w/classifier/stage1/checkpoints"
    assert job["config"].fcam.crf.enabled == v["fcam.crf.enabled"]
  n_minus = sweep.load_sweep(os.path.join(REPO, "configs/sweeps/n_minus.py") + ":0.2,0.5")
  assert [v["fcam.seeds.n_minus"] for v in n_minus] == [0.2, 0.5]
  table1 = sweep.load_sweep(os.path.join(REPO, "configs/sweeps/table1.py") + ":/weights")
  assert len(table1) == 18
  assert {(v["model.backbone"], v["cam.method"]) for v in table1} == {
      (b, m) for b in ("vgg16", "inceptionv3", "resnet50")
      for m in ("cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam")}
  assert all(v["model.pretrained"] == f"/weights/{v['model.backbone']}.npz" for v in table1)
  # Backbone/method variants change stage 1: no shared classifier.
  config.stages = "both"
  assert not sweep.stage2_only(table1)
  half = sweep.load_sweep(os.path.join(REPO, "configs/sweeps/half_precision.py"))
  assert {(v["half_precision"], v["seed"]) for v in half} == {(False, 0), (False, 1), (True, 0)}
  assert not sweep.stage2_only(half)
  assert [j["config"].half_precision for j in sweep.plan(config, half, "/w")] == [
      False, False, True]


def test_bad_variants_name_the_key(data_dir, tmp_path):
  config = tiny_config(data_dir)
  with pytest.raises(config_lib.ConfigError, match="variant v: unknown config key 'config.fcam.nope'"):
    config_lib.override(config, {"fcam.nope": 1}, "variant v")
  with pytest.raises(config_lib.ConfigError, match="variant v: config.fcam.seeds.n_minus"):
    config_lib.override(config, {"fcam.seeds.n_minus": 2.0}, "variant v")
  path = tmp_path / "dupes.py"
  path.write_text("def get_sweep(arg=None):\n  return [{'seed': 1}, {'seed': 1}]\n")
  with pytest.raises(config_lib.ConfigError, match="share the names seed=1"):
    sweep.load_sweep(str(path))
  jobs = sweep.plan(config, [{"seed": s} for s in range(5)], "/w")
  assert [j["name"] for j in sweep.select(jobs, shard="1/2")] == ["seed=1", "seed=3"]
  with pytest.raises(config_lib.ConfigError, match="no variant named x"):
    sweep.select(jobs, only=["x"])


def test_sweep_runs_resumes_and_tabulates(data_dir, tmp_path):
  config = tiny_config(data_dir, stages="both")
  sweep_file = tmp_path / "crf.py"
  sweep_file.write_text(SWEEP_FILE)
  workdir = str(tmp_path / "sweep")
  variants = sweep.load_sweep(str(sweep_file))
  status = sweep.run_sweep(config, variants, workdir)
  assert status == {"classifier": "done", "no_crf": "done", "crf": "done"}

  # Both decoders were trained on the one classifier: same baseline CAM, same classifier step.
  results = {n: json.load(open(os.path.join(workdir, n, "results.json"))) for n in ("no_crf", "crf")}
  clf = json.load(open(os.path.join(workdir, "classifier", "results.json")))
  for r in results.values():
    assert r["stage2"]["classifier_step"] == clf["stage1"]["best_step"]
    assert r["stage2"]["test"]["cam"]["MaxBoxAcc"] == pytest.approx(
        clf["stage1"]["test"]["cam"]["MaxBoxAcc"])
    assert "stage1" not in r
  assert results["crf"]["config"]["fcam"]["crf"]["enabled"] is True
  assert results["no_crf"]["config"]["fcam"]["crf"]["enabled"] is False

  # The table holds each variant's numbers from its results.json.
  rows = open(os.path.join(workdir, "sweep.csv")).read().splitlines()
  header = rows[0].split(",")
  assert header[:2] == ["variant", "fcam.crf.enabled"] and "fcam/MaxBoxAcc" in header
  by_name = {r.split(",")[0]: dict(zip(header, r.split(","))) for r in rows[1:]}
  assert set(by_name) == {"no_crf", "crf"}
  for name, r in results.items():
    assert float(by_name[name]["fcam/PxAP"]) == pytest.approx(
        r["stage2"]["test"]["fcam"]["PxAP"], abs=1e-4)
  assert "| crf | True |" in open(os.path.join(workdir, "sweep.md")).read()

  # Again: everything is finished, nothing runs.
  mtime = os.path.getmtime(os.path.join(workdir, "crf", "results.json"))
  assert sweep.run_sweep(config, variants, workdir) == {
      "classifier": "skipped", "no_crf": "skipped", "crf": "skipped"}
  assert os.path.getmtime(os.path.join(workdir, "crf", "results.json")) == mtime

  # A changed base config is refused instead of mixing two configs in one folder.
  changed = tiny_config(data_dir, stages="both", **{"fcam.seeds.n_minus": 0.3})
  with pytest.raises(config_lib.ConfigError, match="differs in fcam.seeds.n_minus"):
    sweep.run_sweep(changed, variants, workdir)


def test_command_line_dry_run_and_errors(tmp_path):
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  cmd = [sys.executable, "-m", "fcam_jax.sweep", "--config=configs/synthetic.py",
         f"--workdir={tmp_path / 'w'}"]
  out = subprocess.run(cmd + ["--sweep=configs/sweeps/loss_terms.py", "--dry_run"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith("[1/5] classifier:")
  assert [l.split()[1] for l in lines[1:]] == ["seeds:", "seeds+size:", "seeds+crf:",
                                               "seeds+crf+size:"]
  out = subprocess.run(cmd + ["--sweep=configs/sweeps/nope.py"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "sweep file not found: configs/sweeps/nope.py" in out.stderr
