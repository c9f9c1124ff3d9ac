"""Data parallelism: pmap and jit backends, several devices, several processes.

Every case runs in fresh processes (the device count is fixed when JAX starts):
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, and for two processes a
`jax.distributed` job on localhost with CPU collectives over gloo.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, devices, log=None, **env):
  """A process on `devices` CPU devices; its output piped, or appended to the file `log`.
  The caller's XLA_FLAGS come first (tests/measure_tolerances.py's variants)."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags.strip(), PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             PYTHONUNBUFFERED="1", **env)
  out = subprocess.PIPE if log is None else open(log, "a")
  return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=out,
                          stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout=600):
  """Waits for `procs` (piped output) to exit 0; returns their outputs."""
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    outs.append(out)
  return outs


def _dp_run(tmp_path, name, kind, devices, processes=1):
  path = str(tmp_path / f"{name}.npz")
  script = os.path.join(REPO, "tests", "dp_run.py")
  if processes == 1:
    return path, [_start([script, path, kind], devices)]
  port = str(_free_port())
  return path, [_start([script, path, kind, str(i), str(processes), port], devices)
                for i in range(processes)]


def test_backends_devices_and_processes_compute_the_same_steps(tmp_path):
  """3 steps of the global batch 8: 1 device; 4 devices (pmap, jit); 2 processes x 2
  devices (pmap, jit). Gradients and BatchNorm statistics are averaged over all devices,
  so every run ends with the same parameters."""
  cases = {"pmap1": ("pmap", 1, 1), "pmap4": ("pmap", 4, 1), "jit4": ("jit", 4, 1),
           "pmap2x2": ("pmap", 2, 2), "jit2x2": ("jit", 2, 2)}
  paths = {}
  for names in (("pmap1", "pmap4", "jit4"), ("pmap2x2",), ("jit2x2",)):
    procs = []
    for name in names:
      kind, devices, processes = cases[name]
      paths[name], p = _dp_run(tmp_path, name, kind, devices, processes)
      procs += p
    _wait(procs)
  out = {name: np.load(path) for name, path in paths.items()}
  assert [int(out[n]["devices"]) for n in cases] == [1, 4, 4, 4, 4]
  assert [int(out[n]["processes"]) for n in cases] == [1, 1, 1, 2, 2]
  keys = [k for k in out["pmap1"].files if k not in ("devices", "processes")]
  assert len(keys) > 10
  for k in keys:  # jit runs the same per-device program as pmap: identical numbers
    np.testing.assert_array_equal(out["jit4"][k], out["pmap4"][k], err_msg=k)
    for name in ("pmap1", "pmap2x2", "jit2x2"):
      # Other device counts sum in another order: measured up to 30% of atol=1e-5,
      # rtol=1e-4 (YNNPACK off); 10x, rounded up (tests/README.md, "Tolerances").
      np.testing.assert_allclose(out[name][k], out["pmap4"][k], atol=5e-5, rtol=5e-4,
                                 err_msg=f"{name} {k}")


TINY = ["--config=configs/synthetic.py", "--config.dataset.synthetic.image_size=40",
        "--config.dataset.synthetic.train_size=32", "--config.dataset.synthetic.val_size=8",
        "--config.dataset.synthetic.test_size=12", "--config.data.resize_size=36",
        "--config.data.crop_size=32", "--config.data.eval_size=32", "--config.stage1.epochs=1",
        "--config.stage2.epochs=1", "--config.stage1.batch_size=16",
        "--config.stage2.batch_size=16", "--config.eval.batch_size=8",
        "--config.eval.val_interval=0.05", "--config.eval.test_interval=0.02",
        "--config.data.read_threads=1", "--config.eval.num_figures=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  """Both stages: 1 process x 4 devices with pmap and with jit; 2 processes x 2 devices."""
  root = tmp_path_factory.mktemp("parallel")
  common = ["-m", "fcam_jax.main", *TINY, f"--config.dataset.data_dir={data_dir}"]
  # The dataset is generated once, before processes race to build it.
  _wait([_start(common + [f"--workdir={root / 'pmap4'}", "--config.parallel=pmap"], 4)])
  port = _free_port()
  procs = [_start(common + [f"--workdir={root / 'jit4'}", "--config.parallel=jit"], 4)]
  procs += [_start(common + [f"--workdir={root / 'two'}",
                             f"--config.distributed.coordinator_address=localhost:{port}",
                             "--config.distributed.num_processes=2",
                             f"--config.distributed.process_id={i}"], 2) for i in range(2)]
  _wait(procs)
  return root


def _results(root, name):
  return json.load(open(root / name / "results.json"))


def test_jit_and_two_processes_end_to_end_equal_pmap(runs):
  ref = _results(runs, "pmap4")
  for name in ("jit4", "two"):
    r = _results(runs, name)
    assert r["devices"] == ref["devices"] == "4 x cpu"
    for stage, maps in (("stage1", ("cam",)), ("stage2", ("cam", "fcam"))):
      assert r[stage]["best_step"] == ref[stage]["best_step"]
      for m in maps:
        got, want = r[stage]["test"][m], ref[stage]["test"][m]
        assert got["num_images"] == want["num_images"] == 12  # each test image once
        for k in ("MaxBoxAcc", "MaxBoxAccV2", "top1_cls", "top5_loc"):
          assert got[k] == pytest.approx(want[k], abs=1e-6), (name, stage, m, k)
        assert got["PxAP"] == pytest.approx(want["PxAP"], abs=0.05), (name, stage, m)
      assert [h["step"] for h in r[stage]["history"]] == [h["step"] for h in ref[stage]["history"]]


def test_two_processes_share_checkpoints_and_only_process_0_writes(runs):
  two = runs / "two"
  for stage in ("stage1", "stage2"):
    steps = sorted(os.listdir(two / stage / "checkpoints"))
    assert steps == sorted(os.listdir(runs / "pmap4" / stage / "checkpoints"))
    assert (two / stage / "figures" / "samples_grid.png").exists()
  # Stage 2 restored stage 1's checkpoint in both processes (it ran), and process 1
  # left no files of its own.
  assert _results(runs, "two")["stage2"]["classifier_step"] == _results(runs, "two")["stage1"]["best_step"]
  assert sorted(p.name for p in two.iterdir() if not p.name.startswith("events.")) == [
      "config.json", "metrics.jsonl", "results.json", "stage1", "stage2", "summary.md"]


@pytest.mark.parametrize("kind", ["pmap", "jit"])
def test_compiler_options_reach_xla(kind):
  """The steps compile with DataParallel's XLA options (a bad one fails, the default
  CPU one gives the same numbers as none)."""
  import jax
  from fcam_jax import parallel
  assert parallel.compiler_options(cpu_ynnpack=True) == {}
  assert parallel.compiler_options() == (parallel.NO_YNNPACK if jax.default_backend() == "cpu"
                                         else {})

  def step(w, x):
    return jax.lax.pmean(jax.numpy.tanh(x @ w).sum(), parallel.AXIS)
  w, x = np.ones((3, 2), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3)
  outs = []
  for options in ({}, parallel.compiler_options()):
    par = parallel.DataParallel(kind, options)
    fn = par.step(step, (False, True), donate=())
    outs.append(par.first(fn(par.replicate(w), par.shard(x))))
    assert fn.__name__ == "step"
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)
  bad = parallel.DataParallel(kind, {"xla_no_such_option_here": "1"})
  with pytest.raises(Exception, match="xla_no_such_option_here"):
    bad.step(step, (False, True), donate=())(bad.replicate(w), bad.shard(x))


# Maps of the same checkpoint computed with another device count: XLA:CPU compiles
# another per-device batch (here 8 vs 2), whose float32 sums may round differently
# (measured max 1.3e-6 on maps in [0, 1]); 10x, rounded up (tests/README.md, "Tolerances").
MAP_ATOL = 2e-5


def test_evaluation_is_the_same_on_1_and_4_devices(runs, tmp_path):
  """pmap4's checkpoints of both stages scored on 1 and on 4 devices (an eval batch of 8
  and 12 test images: the last batch is padded). Every image counts once; the maps agree
  to float rounding; the box metrics and curves, which see the maps quantized to uint8,
  are identical wherever the quantized maps are, and the mask metrics and curves wherever
  every pixel falls in the same histogram bin."""
  from fcam_jax import inference  # pylint: disable=g-import-not-at-top
  from fcam_jax.metrics import boxes, common, masks  # pylint: disable=g-import-not-at-top
  workdir = str(runs / "pmap4")
  config = inference.load_config(workdir)
  assert config.dataset.synthetic.test_size % config.eval.batch_size  # padded
  script = os.path.join(REPO, "tests", "eval_devices.py")
  outs = {n: str(tmp_path / f"eval{n}.json") for n in (1, 4)}
  _wait([_start([script, workdir, outs[n], "pmap"], n) for n in outs])
  got = {n: json.load(open(path)) for n, path in outs.items()}
  maps = {n: np.load(path[:-len(".json")] + ".npz") for n, path in outs.items()}
  assert [got[n]["devices"] for n in outs] == [1, 4]
  keys = sorted(got[1]["results"])
  assert keys == ["stage1/test/cam", "stage1/val/cam", "stage2/test/cam", "stage2/test/fcam",
                  "stage2/val/fcam"]
  exact = []
  for key in keys:
    a, b = got[1]["results"][key], got[4]["results"][key]
    split = key.split("/")[1]
    size = config.dataset.synthetic[f"{split}_size"]
    assert a["num_images"] == b["num_images"] == size, key
    m1, m4 = maps[1][key], maps[4][key]
    assert m1.shape == (size, config.data.eval_size, config.data.eval_size)
    np.testing.assert_allclose(m4, m1, rtol=0, atol=MAP_ATOL, err_msg=key)
    box_keys = [k for k in a if "Box" in k or "loc" in k or k == "curve_tau"]
    mask_keys = [k for k in a if "PxAP" in k or k.startswith("curve_pr") or k in (
        "curve_precision", "curve_recall")]
    assert box_keys and mask_keys, key
    if np.array_equal(boxes.quantize(m1), boxes.quantize(m4)):
      exact.append(f"{key} boxes")
      assert {k: a[k] for k in box_keys} == {k: b[k] for k in box_keys}, key
    interval = config.eval.val_interval if split == "val" else config.eval.test_interval
    thresholds = common.cam_thresholds(interval)
    if np.array_equal(masks.score_bins(m1, thresholds, interval),
                      masks.score_bins(m4, thresholds, interval)):
      exact.append(f"{key} masks")
      assert {k: a[k] for k in mask_keys} == {k: b[k] for k in mask_keys}, key
    else:  # a pixel within float rounding of a bin edge moved to the next bin
      assert a["PxAP"] == pytest.approx(b["PxAP"], abs=0.01), key
    for k in set(a) - set(box_keys) - set(mask_keys):  # classification: logits' top-k
      assert a[k] == b[k], (key, k)
  assert exact  # the exact comparisons ran


# Longer than TINY's stage 1 (24 steps), logged every step, so that a signal sent after
# step 2 lands mid-stage even where a step takes 0.1 s: JAX honours it at a step number
# after the furthest one reached, measured up to 8 steps after the log's step 2 on an
# idle machine (one past the stage's end would not be honoured in it).
LONGER = TINY + ["--config.stage1.epochs=6", "--config.stage1.batch_size=8",
                 "--config.log_every_steps=1", "--config.eval.num_figures=0"]


def _two_processes(workdir, data_dir, logs=None):
  port = _free_port()
  return [_start(["-m", "fcam_jax.main", *LONGER, f"--config.dataset.data_dir={data_dir}",
                  f"--workdir={workdir}", f"--config.distributed.coordinator_address=localhost:{port}",
                  "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                 2, log=None if logs is None else f"{logs}.{i}.log") for i in range(2)]


def _stage1_steps(log: str) -> int:
  """The last stage-1 train step process 0's log reports (written as it happens, unlike
  metrics.jsonl, which the writer flushes later)."""
  if not os.path.exists(log):
    return 0
  return max((int(m) for m in re.findall(r"\] \[(\d+)\] stage1/train/", open(log).read())),
             default=0)


def test_sigterm_to_both_processes_saves_one_step_and_resumes_exactly(runs, tmp_path, data_dir):
  """2 processes x 2 devices, SIGTERM to both during stage 1: JAX's preemption sync point
  makes them stop at the same step, save it together and exit 0; the same commands
  resume from it and end with the parameters and results of an uninterrupted job."""
  import jax  # pylint: disable=g-import-not-at-top
  from fcam_jax import checkpoint  # pylint: disable=g-import-not-at-top
  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  _wait(_two_processes(straight, data_dir))
  logs = str(tmp_path / "stopped")
  procs = _two_processes(stopped, data_dir, logs)
  deadline = time.time() + 1200  # against a hang only
  while all(p.poll() is None for p in procs) and _stage1_steps(f"{logs}.0.log") < 2:
    assert time.time() < deadline
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), "the job ended before SIGTERM"
  for p in procs:
    p.send_signal(signal.SIGTERM)
  for p in procs:
    p.wait(timeout=600)
  out = [open(f"{logs}.{i}.log").read() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], out[0][-3000:] + out[1][-3000:]
  steps = [int(o.split("stage1: preempted at step ")[1].split()[0].rstrip(";")) for o in out]
  assert steps[0] == steps[1] and steps[0] > 2, steps  # the same step, after the signal
  with checkpoint.Checkpointer(os.path.join(stopped, "stage1", "checkpoints"),
                               read_only=True) as ckpt:
    assert ckpt.latest_step() == steps[0]
  assert not os.path.exists(os.path.join(stopped, "results.json"))

  for out in _wait(_two_processes(stopped, data_dir)):
    assert f"stage1: resuming from step {steps[0]} " in out
  for stage in ("stage1", "stage2"):
    states = []
    for workdir in (straight, stopped):
      with checkpoint.Checkpointer(os.path.join(workdir, stage, "checkpoints"),
                                   read_only=True) as ckpt:
        states.append((ckpt.all_steps(), ckpt.restore_raw(ckpt.latest_step())))
    assert states[0][0] == states[1][0], stage
    for x, y in zip(jax.tree.leaves(states[0][1]), jax.tree.leaves(states[1][1])):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=stage)
    a, b = _results(tmp_path, "straight")[stage], _results(tmp_path, "stopped")[stage]
    assert a["history"] == b["history"] and a["test"] == b["test"], stage
