"""Faults lose nothing: SIGTERM, SIGKILL at random moments, NaN losses.

A run that is interrupted and restarted with the same command must end with the
parameters and metrics of an uninterrupted run (data order and keys are functions
of the seed and the step, and the step is in the checkpoint).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import checkpoint, loop, losses, train
from tests.conftest import REPO, tiny_config


def _cli(workdir, data_dir):
  return [sys.executable, "-m", "fcam_jax.main", "--config=configs/synthetic.py",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          "--config.dataset.synthetic.image_size=40", "--config.dataset.synthetic.train_size=48",
          "--config.dataset.synthetic.val_size=12", "--config.dataset.synthetic.test_size=12",
          "--config.data.resize_size=36", "--config.data.crop_size=32",
          "--config.data.eval_size=32", "--config.stage1.batch_size=8",
          "--config.stage2.batch_size=8", "--config.stage1.epochs=2", "--config.stage2.epochs=2",
          "--config.eval.batch_size=8", "--config.eval.val_interval=0.05",
          "--config.eval.test_interval=0.02", "--config.log_every_steps=1",
          "--config.eval.num_figures=0", "--config.data.read_threads=1",
          "--config.compilation_cache="]


ENV = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")


def _final_state(workdir, stage):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, stage, "checkpoints"), read_only=True)
  step = ckpt.latest_step()
  state = ckpt.restore_raw(step)
  ckpt.close()
  return step, state


def _assert_same_run(a, b):
  for stage in ("stage1", "stage2"):
    step_a, state_a = _final_state(a, stage)
    step_b, state_b = _final_state(b, stage)
    assert step_a == step_b, stage
    for x, y in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ra, rb = (json.load(open(os.path.join(w, "results.json"))) for w in (a, b))
  for stage in ("stage1", "stage2"):
    assert ra[stage]["history"] == rb[stage]["history"], stage
    assert ra[stage]["test"] == rb[stage]["test"], stage


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("straight"))
  t0 = time.time()
  r = subprocess.run(_cli(workdir, data_dir), cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, time.time() - t0


def _trained_steps(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  steps = [json.loads(l).get("step", 0) for l in open(path) if '"stage' in l and "/train/" in l]
  return max(steps, default=0)


def test_sigterm_checkpoints_at_a_step_boundary_and_exits_0(tmp_path, data_dir, straight):
  reference, _ = straight
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_cli(workdir, data_dir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while proc.poll() is None and _trained_steps(workdir) < 2 and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before SIGTERM:\n" + proc.stderr.read()[-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "preempted at step" in err
  step = int(err.split("preempted at step ")[1].split()[0].rstrip(";"))
  stage = err.split(": preempted at step")[0].split()[-1]
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, stage, "checkpoints"), read_only=True)
  assert ckpt.latest_step() == step  # saved at the step boundary it reached
  ckpt.close()
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  r = subprocess.run(_cli(workdir, data_dir), cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"resuming from step {step}" in r.stderr
  _assert_same_run(workdir, reference)


def _train_lines(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  return sum(1 for l in open(path) if "/train/" in l)


def test_sigkill_at_random_moments_loses_nothing(tmp_path, data_dir, straight):
  """Kill -9 the same run again and again at random moments (seeded: after a random
  number of logged train steps, so whatever the machine's speed), restarting it with the
  same command each time, then let it finish."""
  reference, _ = straight
  workdir = str(tmp_path / "run")
  rng = np.random.default_rng(0)
  kills = 0
  for _ in range(3):
    target = _train_lines(workdir) + int(rng.integers(1, 9))
    proc = subprocess.Popen(_cli(workdir, data_dir), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while proc.poll() is None and _train_lines(workdir) < target and time.time() < deadline:
      time.sleep(0.02)
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      kills += 1
    if os.path.exists(os.path.join(workdir, "results.json")):
      break
  assert kills >= 2, f"only {kills} of the trials were killed mid-run"
  r = subprocess.run(_cli(workdir, data_dir), cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  _assert_same_run(workdir, reference)


def _stage2_steps(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  return max((json.loads(l).get("step", 0) for l in open(path) if "stage2/train/" in l),
             default=0)


STEPS_PER_EPOCH = 6  # 48 training images, batch 8


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_stage2_stopped_in_its_second_epoch_resumes_exactly(tmp_path, data_dir, straight, sig):
  """SIGTERM (a checkpoint at the next step boundary) or SIGKILL (none: the end of epoch
  1's) while stage 2 trains its second epoch; the same command finishes the run with the
  decoder's parameters, batch statistics, optimizer state and ELB t of an uninterrupted
  run, and its results."""
  reference, _ = straight
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_cli(workdir, data_dir), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 1800  # against a hang only: stage 1 and stage 2's epoch 1 come first
  while (proc.poll() is None and _stage2_steps(workdir) < STEPS_PER_EPOCH + 1
         and time.time() < deadline):
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before the signal:\n" + proc.stderr.read()[-3000:]
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=600)
  stage2 = checkpoint.Checkpointer(os.path.join(workdir, "stage2", "checkpoints"), read_only=True)
  latest = stage2.latest_step()
  stage2.close()
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, err[-3000:]
    step = int(err.split("stage2: preempted at step ")[1].split()[0].rstrip(";"))
    assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH and latest == step  # mid-epoch 2
  else:
    assert proc.returncode == -signal.SIGKILL
    assert latest == STEPS_PER_EPOCH  # the end of epoch 1
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  r = subprocess.run(_cli(workdir, data_dir), cwd=REPO, env=ENV, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"stage2: resuming from step {latest} (epoch {latest // STEPS_PER_EPOCH})" in r.stderr
  _, state = _final_state(workdir, "stage2")
  assert {"params", "batch_stats", "opt_state", "aux"} <= set(state)
  assert float(state["aux"]["elb_t"]) == pytest.approx(1.01 ** 2)  # two epochs' updates
  _assert_same_run(workdir, reference)  # every leaf of both stages' states, and the results


def test_nan_in_stage1_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  config = tiny_config(data_dir, stages="stage1", **{"stage1.lr": 1e30})
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(e.value)
  assert message.startswith("stage1: the ")
  assert "became NaN/Inf at step" in message and "rerun the same command" in message
  ckpt = checkpoint.Checkpointer(str(tmp_path / "stage1" / "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [0]  # the diverged state was never saved
  state = ckpt.restore_raw(0)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_nan_in_one_stage2_term_is_named(tmp_path, data_dir, monkeypatch):
  """The size term turns NaN once the ELB's t has grown (epoch 2): stage 2 stops at the
  first step of epoch 2, names the term, and keeps epoch 1's checkpoint."""
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(data_dir, stages="stage1"), workdir)
  real = losses.size_loss
  monkeypatch.setattr(losses, "size_loss",
                      lambda probs, t: jnp.where(t > 1.005, jnp.nan, real(probs, t)))
  config = tiny_config(data_dir, stages="stage2", **{"stage2.epochs": 2})
  with pytest.raises(train.NonFiniteError, match=r"stage2: the size loss \(fcam.size\) became "
                     r"NaN/Inf at step 4 \(") as e:
    train.train_and_evaluate(config, workdir)
  assert "crf=" in str(e.value) and "seeds=" in str(e.value)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "stage2", "checkpoints"), read_only=True)
  assert ckpt.latest_step() == 3  # the end of epoch 1 (3 steps of 16 images)


def test_unwritable_or_full_workdir_is_refused_before_training(tmp_path, data_dir, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  config = tiny_config(data_dir, stages="stage1")
  with pytest.raises(OSError, match="a_file"):
    train.train_and_evaluate(config, str(blocker / "workdir"))
  real = loop.shutil.disk_usage
  monkeypatch.setattr(loop.shutil, "disk_usage",
                      lambda p: real(p)._replace(free=1000))  # 1000 bytes left
  workdir = tmp_path / "full"
  with pytest.raises(OSError, match=r"has 0 MiB free; its checkpoints need about \d+ MiB"):
    train.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(workdir / "stage1" / "checkpoints" / "0")  # nothing trained
