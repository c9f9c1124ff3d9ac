"""Stage 2 end to end on a tiny config: from stage 1's best checkpoint to F-CAM results."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from fcam_jax import checkpoint, train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def both_stages(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("fcam"))
  config = tiny_config(data_dir, stages="both", **{"stage2.epochs": 2})
  return workdir, config, train.train_and_evaluate(config, workdir)


def test_results_hold_cam_and_fcam_side_by_side(both_stages):
  workdir, config, _ = both_stages
  results = json.load(open(os.path.join(workdir, "results.json")))
  s2 = results["stage2"]
  for name in ("cam", "fcam"):
    assert s2["test"][name]["num_images"] == config.dataset.synthetic.test_size
  for key in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_loc", "top1_cls"):
    pair = s2["comparison"][key]
    assert pair["fcam"] == s2["test"]["fcam"][key] and pair["cam"] == s2["test"]["cam"][key]
  # The baseline in stage 2 is the CAM of stage 1's best classifier on the same test set.
  s1 = results["stage1"]
  assert s2["classifier_step"] == s1["best_step"]
  assert s2["test"]["cam"]["MaxBoxAcc"] == pytest.approx(s1["test"]["cam"]["MaxBoxAcc"])
  assert s2["test"]["cam"]["top1_cls"] == pytest.approx(s1["test"]["cam"]["top1_cls"])
  assert [h["epoch"] for h in s2["history"]] == [0, 1, 2]


def test_elb_t_grows_per_epoch_and_is_checkpointed(both_stages):
  workdir, config, results = both_stages
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "stage2", "checkpoints"), read_only=True)
  state = ckpt.restore_raw(ckpt.latest_step())
  assert float(state["aux"]["elb_t"]) == pytest.approx(config.fcam.size.t_init * 1.01 ** 2)
  # Only the decoder is trained: its parameters are all the stage-2 state holds.
  assert set(state["params"]) >= {"head"} and "backbone" not in state["params"]


def test_missing_stage1_checkpoint_is_a_clear_error(tmp_path, data_dir):
  config = tiny_config(data_dir, stages="stage2")
  with pytest.raises(FileNotFoundError, match="stage 2 needs a trained stage-1 classifier"):
    train.train_and_evaluate(config, str(tmp_path))
  config = tiny_config(data_dir, stages="stage2",
                       **{"stage2.classifier_checkpoint": str(tmp_path / "nowhere")})
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(config, str(tmp_path / "w2"))


def test_figures_and_summary_after_a_run(both_stages):
  workdir, config, _ = both_stages
  results = json.load(open(os.path.join(workdir, "results.json")))
  n = min(8, config.dataset.synthetic.test_size)  # config.eval.num_figures defaults to 8
  for stage, maps in (("stage1", ("cam",)), ("stage2", ("cam", "fcam"))):
    fig_dir = os.path.join(workdir, stage, "figures")
    assert len(glob.glob(os.path.join(fig_dir, "samples", "*.png"))) == n
    for name in ("samples_grid", "box_accuracy", "pr_curve", "activations"):
      assert os.path.getsize(os.path.join(fig_dir, f"{name}.png")) > 0, (stage, name)
    listed = results[stage]["figures"]
    assert len(listed) == n + 4 and all(os.path.isfile(os.path.join(workdir, p)) for p in listed)
    hist = results[stage]["activation_histogram"]
    pixels = config.dataset.synthetic.test_size * config.data.eval_size ** 2
    assert [sum(hist[m]) for m in maps] == [pixels] * len(maps)
  # summary.md: the stage-1 CAM, and in stage 2 the baseline CAM, F-CAM and their difference.
  rows = {}
  for line in open(os.path.join(workdir, "summary.md")):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] in ("stage1", "stage2"):
      rows[(cells[0], cells[1])] = cells[2:]
  s2 = results["stage2"]["test"]
  assert set(rows) == {("stage1", "CAM*"), ("stage2", "CAM* (baseline)"), ("stage2", "F-CAM"),
                       ("stage2", "F-CAM - CAM*")}
  assert float(rows[("stage2", "F-CAM")][0]) == pytest.approx(s2["fcam"]["MaxBoxAcc"], abs=0.01)
  assert float(rows[("stage2", "CAM* (baseline)")][2]) == pytest.approx(s2["cam"]["PxAP"], abs=0.01)
  assert float(rows[("stage2", "F-CAM - CAM*")][0]) == pytest.approx(
      s2["fcam"]["MaxBoxAcc"] - s2["cam"]["MaxBoxAcc"], abs=0.01)
