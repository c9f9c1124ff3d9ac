"""Stage-1 training end to end on a tiny config: outputs, resume after a kill, data parallelism."""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fcam_jax import checkpoint, evaluation, loop, train, writers
from tests import test_checkpoint
from tests.conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(data_dir, stages="stage1")
  return workdir, config, train.train_and_evaluate(config, workdir)


def test_stage1_writes_results_checkpoints_and_events(stage1_run):
  workdir, config, results = stage1_run
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  s1 = on_disk["stage1"]
  test = s1["test"]["cam"]
  assert test["num_images"] == config.dataset.synthetic.test_size
  for key in ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_loc", "top5_loc", "top1_cls"):
    assert 0.0 <= test[key] <= 100.0, key
  # Validation before training and after each epoch; the best is one of them.
  assert [h["epoch"] for h in s1["history"]] == list(range(config.stage1.epochs + 1))
  selection = config.eval.selection_metric
  best = max(h[selection] for h in s1["history"])
  assert s1["val_at_best"][selection] == best
  assert on_disk["config"]["model"]["backbone"] == "small"
  assert on_disk["versions"]["jax"] and on_disk["git_commit"]
  assert "MaxBoxAcc" in on_disk["metric_definitions"]
  steps = sorted(int(os.path.basename(p)) for p in
                 glob.glob(os.path.join(workdir, "stage1", "checkpoints", "[0-9]*"))
                 if os.path.basename(p).isdigit())
  last = config.stage1.epochs * s1["steps_per_epoch"]
  assert last in steps and s1["best_step"] in steps and len(steps) <= 2
  assert os.path.getsize(os.path.join(workdir, "metrics.jsonl")) > 0
  if writers.have_tensorflow():
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def test_rerun_of_a_finished_stage_reuses_its_results(stage1_run):
  workdir, config, results = stage1_run
  again = train.train_and_evaluate(config, workdir)
  assert again["stage1"]["test"] == json.loads(json.dumps(results["stage1"]["test"]))


def test_plain_writer_without_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(writers, "have_tensorflow", lambda: False)
  w = writers.create_writer(str(tmp_path))
  w.write_scalars(3, {"a": 1.5})
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines[0]["step"] == 3 and lines[0]["a"] == 1.5
  progress = writers.report_progress(100, w, every_steps=2)
  progress(0, t=0.0)
  progress(2, t=1.0)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert lines[-1]["steps_per_sec"] == pytest.approx(2.0)


def _cli(workdir, data_dir, *extra):
  return [sys.executable, "-m", "fcam_jax.main", "--config=configs/synthetic.py:stage1",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          "--config.dataset.synthetic.image_size=40", "--config.dataset.synthetic.train_size=48",
          "--config.dataset.synthetic.val_size=12", "--config.dataset.synthetic.test_size=12",
          "--config.data.resize_size=36", "--config.data.crop_size=32", "--config.data.eval_size=32",
          "--config.stage1.batch_size=16", "--config.eval.batch_size=8",
          "--config.eval.val_interval=0.02", "--config.eval.test_interval=0.01", *extra]


def _params(workdir):
  with checkpoint.Checkpointer(os.path.join(workdir, "stage1", "checkpoints"),
                             read_only=True) as ckpt:
    step = ckpt.latest_step()
    return step, ckpt.restore_raw(step)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, data_dir, stage1_run):
  """SIGKILL after the first epoch's checkpoint; the same command finishes the run,
  and ends with exactly the parameters and metrics of the uninterrupted `stage1_run`."""
  straight, config, _ = stage1_run
  epochs = f"--config.stage1.epochs={config.stage1.epochs}"
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_cli(killed, data_dir, epochs), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  ckpt_dir = os.path.join(killed, "stage1", "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    done = [d for d in glob.glob(os.path.join(ckpt_dir, "[0-9]*"))
            if os.path.basename(d).isdigit() and int(os.path.basename(d)) > 0]
    if done:
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stderr.read()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "results.json"))

  r = subprocess.run(_cli(killed, data_dir, epochs), cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resuming from step" in r.stderr

  step_a, a = _params(killed)
  step_b, b = _params(straight)
  assert step_a == step_b
  import jax  # pylint: disable=g-import-not-at-top
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ra = json.load(open(os.path.join(killed, "results.json")))["stage1"]
  rb = json.load(open(os.path.join(straight, "results.json")))["stage1"]
  assert ra["history"] == rb["history"] and ra["test"] == rb["test"]


def test_a_crash_in_validation_keeps_the_epoch_and_resumes_with_its_validation(
    tmp_path, stage1_run, monkeypatch):
  """An exception while validating after epoch 1 (e.g. a val image that became
  unreadable) saves the trained state first; the rerun validates that epoch, then goes
  on, and ends exactly like a run that never failed."""
  _, config, straight = stage1_run
  straight = straight["stage1"]

  real, calls = evaluation.evaluate, []

  def failing_evaluate(*args, **kwargs):
    calls.append(kwargs.get("label", ""))
    if len(calls) == 2:  # epoch 0 passes, epoch 1's validation fails
      raise OSError("val/00003.png: unreadable (injected)")
    return real(*args, **kwargs)
  monkeypatch.setattr(evaluation, "evaluate", failing_evaluate)
  workdir = str(tmp_path / "run")
  with pytest.raises(OSError, match="injected"):
    train.train_and_evaluate(config, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "stage1", "checkpoints"), read_only=True)
  assert ckpt.latest_step() == straight["steps_per_epoch"]  # epoch 1's training is kept
  ckpt.close()

  monkeypatch.setattr(evaluation, "evaluate", real)
  resumed = train.train_and_evaluate(config, workdir)["stage1"]
  assert resumed["history"] == straight["history"]
  assert resumed["best_step"] == straight["best_step"] and resumed["test"] == straight["test"]


def _checkpoints(workdir):
  """{step: (state, meta)} of every kept stage-1 checkpoint."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "stage1", "checkpoints"), read_only=True)
  out = {s: (ckpt.restore_raw(s), ckpt.restore_meta(s)) for s in ckpt.all_steps()}
  ckpt.close()
  return out


def _assert_same_checkpoints(a, b):
  ca, cb = _checkpoints(a), _checkpoints(b)
  assert sorted(ca) == sorted(cb)
  import jax  # pylint: disable=g-import-not-at-top
  for step in ca:
    (sa, ma), (sb, mb) = ca[step], cb[step]
    assert ma == mb, step
    assert jax.tree.structure(sa) == jax.tree.structure(sb)
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(step))


def _assert_same_results(a, b):
  ra = json.load(open(os.path.join(a, "results.json")))["stage1"]
  rb = json.load(open(os.path.join(b, "results.json")))["stage1"]
  assert ra["history"] == rb["history"] and ra["test"] == rb["test"]
  assert ra["best_step"] == rb["best_step"]


def test_background_checkpoints_end_like_synchronous_ones(tmp_path, data_dir, stage1_run):
  straight, config, _ = stage1_run
  assert config.async_checkpoints  # the default
  sync = str(tmp_path / "sync")
  train.train_and_evaluate(tiny_config(data_dir, stages="stage1", async_checkpoints=False), sync)
  _assert_same_checkpoints(sync, straight)
  _assert_same_results(sync, straight)


PREEMPT_AT = 5  # mid-epoch 2 (3 steps per epoch): the latest step differs from the best


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory, data_dir):
  """The tiny stage-1 run stopped by a (simulated) SIGTERM at step PREEMPT_AT."""
  workdir = str(tmp_path_factory.mktemp("preempted"))
  config = tiny_config(data_dir, stages="stage1")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loop._SigtermFlag, "__call__", lambda self, step: step == PREEMPT_AT)
    with pytest.raises(train.Preempted, match=f"preempted at step {PREEMPT_AT}"):
      train.train_and_evaluate(config, workdir)
  with checkpoint.Checkpointer(os.path.join(workdir, "stage1", "checkpoints"),
                             read_only=True) as ckpt:
    steps = ckpt.all_steps()
  assert len(steps) == 2 and steps[-1] == PREEMPT_AT
  return workdir, config, steps[0]


@pytest.mark.parametrize("how", ["missing_file", "truncated_file", "garbage_meta"])
def test_a_corrupt_latest_checkpoint_resumes_from_the_previous_one(
    tmp_path, preempted_run, stage1_run, how, monkeypatch, caplog):
  """The latest checkpoint damaged (a file deleted, a file truncated, garbage in the meta
  JSON): the rerun names it in one line, keeps it under a new name, resumes from the
  other kept checkpoint and ends exactly like the uninterrupted run."""
  source, config, previous = preempted_run
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)
  ckpt_dir = os.path.join(workdir, "stage1", "checkpoints")
  test_checkpoint.corrupt(os.path.join(ckpt_dir, str(PREEMPT_AT)), how)
  resumed = []
  real = checkpoint.Checkpointer.restore_latest
  monkeypatch.setattr(checkpoint.Checkpointer, "restore_latest",
                      lambda self, target: resumed.append(real(self, target)) or resumed[-1])
  caplog.set_level(logging.WARNING, logger="absl")
  train.train_and_evaluate(config, workdir)
  assert resumed[0][0] == previous
  aside = [n for n in os.listdir(ckpt_dir) if n.startswith(f"{PREEMPT_AT}.unreadable-")]
  assert len(aside) == 1
  lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0]
  assert lines[0].startswith(f"{ckpt_dir}: checkpoint step {PREEMPT_AT} is unreadable (")
  assert lines[0].endswith(f"moved to {aside[0]}")
  _assert_same_checkpoints(workdir, stage1_run[0])
  _assert_same_results(workdir, stage1_run[0])
