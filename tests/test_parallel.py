"""Data parallelism: pmap and jit backends, several devices, several processes.

Every case runs in fresh processes (the device count is fixed when JAX starts):
`XLA_FLAGS=--xla_force_host_platform_device_count=N`, and for two processes a
`jax.distributed` job on localhost with CPU collectives over gloo.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, devices, **env):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **env)
  return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout=600):
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]


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
      np.testing.assert_allclose(out[name][k], out["pmap4"][k], atol=1e-5, rtol=1e-4,
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
