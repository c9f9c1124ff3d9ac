"""Measures how far apart the two sides of the suite's float comparisons are.

Not a pytest module. Run from the repository root:

  python tests/measure_tolerances.py tests/cams/test_cams.py tests/losses   # default variants
  python tests/measure_tolerances.py --variants base,ynn_off tests/... -k WORD   # some
  python tests/measure_tolerances.py --list-variants

Each variant reruns the given tests in a fresh process with another environment that
changes how XLA:CPU sums (the perturbations another CPU would bring: thread counts,
device counts, YNNPACK's convolution and dot kernels on or off, the other Python/JAX
stack); every `np.testing.assert_allclose` and `pytest.approx` comparison is recorded (the test, its line, the
largest absolute and relative difference, and `used`: the largest |a - d| / (atol +
rtol |d|), the fraction of the tolerance spent). Prints, per comparison, the worst over
the variants. tests/README.md ("Tolerances") states the rule the tolerances follow.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (python, extra environment). XLA_FLAGS values are appended to the caller's.
VARIANTS = {
    "base": (None, {}),
    "one_thread": (None, {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
                                       "intra_op_parallelism_threads=1",
                          "_TASKSET": "0"}),
    "four_devices": (None, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}),
    "ynn_off": (None, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}),
    # A second venv's python (Python 3.12, jax 0.11.2, flax 0.12.12): $FCAM_PY312.
    "py312": (os.environ.get("FCAM_PY312", "python3.12"), {}),
}
_LOG = "FCAM_TOLERANCE_LOG"


# ----------------------------------------------------------------- the pytest plugin part


def _record(actual, desired, rtol, atol):
  a = np.asarray(actual, np.float64)
  d = np.asarray(desired, np.float64)
  diff = np.abs(a - d)
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(d != 0, diff / np.abs(d), np.where(diff == 0, 0.0, np.inf))
    used = diff / (atol + rtol * np.abs(d))
    used = np.where(diff == 0, 0.0, used)
  test, line = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], "?"
  for frame in reversed(traceback.extract_stack()[:-2]):
    if os.path.basename(frame.filename).startswith("test_"):
      line = f"{os.path.relpath(frame.filename, REPO)}:{frame.lineno}"
      if frame.name.startswith("test_"):
        break
  return {"test": test, "line": line, "n": int(diff.size),
          "max_abs": float(diff.max(initial=0)), "max_rel": float(rel.max(initial=0)),
          "used": float(used.max(initial=0)), "rtol": float(rtol), "atol": float(atol)}


def pytest_configure(config):
  del config
  path = os.environ.get(_LOG)
  if not path:
    return
  real = np.testing.assert_allclose

  def assert_allclose(actual, desired, rtol=1e-7, atol=0, *args, **kwargs):
    try:
      row = _record(actual, desired, rtol, atol)
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    except Exception as e:  # pylint: disable=broad-except
      print(f"measure_tolerances: not recorded ({type(e).__name__}: {e})", file=sys.stderr)
    return real(actual, desired, rtol, atol, *args, **kwargs)
  np.testing.assert_allclose = assert_allclose

  from _pytest import approx as python_api  # pylint: disable=g-import-not-at-top
  real_eq = python_api.ApproxScalar.__eq__

  def approx_eq(self, actual):  # pytest.approx: scalars, and each entry of a dict or list
    try:
      if isinstance(self.expected, (int, float, np.number)) and not isinstance(self.expected, bool):
        row = _record(actual, self.expected, 0.0, float(self.tolerance))
        with open(path, "a") as f:
          f.write(json.dumps(dict(row, approx=True)) + "\n")
    except Exception as e:  # pylint: disable=broad-except
      print(f"measure_tolerances: not recorded ({type(e).__name__}: {e})", file=sys.stderr)
    return real_eq(self, actual)
  python_api.ApproxScalar.__eq__ = approx_eq


# ----------------------------------------------------------------------- the runner part


def run_variant(name, tests, log):
  python, extra = VARIANTS[name]
  python = python or sys.executable
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", **{_LOG: log})
  cmd = [python, "-m", "pytest", "-q", "-p", "tests.measure_tolerances", *tests]
  for key, value in extra.items():
    if key == "_TASKSET":
      cmd = ["taskset", "-c", value] + cmd
    elif key == "XLA_FLAGS":
      flags = [f for f in value.split() if f.startswith("--")]
      env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", "")] + flags).strip()
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  tail = (r.stdout.strip().splitlines() or [""])[-1]
  print(f"{name}: {tail}", flush=True)
  return [json.loads(l) for l in open(log)] if os.path.exists(log) else []


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("tests", nargs="*")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--list-variants", action="store_true")
  parser.add_argument("--json", help="also write every record here")
  args, pytest_args = parser.parse_known_args()  # e.g. -k WORDS: passed to pytest
  if args.list_variants:
    for name, (python, extra) in VARIANTS.items():
      print(f"{name}: {python or 'this python'} {extra}")
    return
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.variants.split(","):
      for row in run_variant(name, args.tests + pytest_args, os.path.join(tmp, f"{name}.jsonl")):
        rows.append(dict(row, variant=name))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f)
  worst = collections.OrderedDict()
  for row in rows:
    key = (row["test"], row["line"])
    w = worst.setdefault(key, {"max_abs": 0.0, "max_rel": 0.0, "used": 0.0, "by": "",
                               "rtol": row["rtol"], "atol": row["atol"]})
    for k in ("max_abs", "max_rel"):
      w[k] = max(w[k], row[k])
    if row["used"] >= w["used"]:
      w["used"], w["by"] = row["used"], row["variant"]
  print(f"{'test':70s} {'line':32s} {'max_abs':>9s} {'max_rel':>9s} {'used':>7s}  worst variant")
  for (test, line), w in worst.items():
    print(f"{test[-70:]:70s} {line:32s} {w['max_abs']:9.2e} {w['max_rel']:9.2e} "
          f"{w['used']:7.3f}  {w['by']}")


if __name__ == "__main__":
  main()
