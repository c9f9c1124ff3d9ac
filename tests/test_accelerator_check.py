"""benchmarks/accelerator_check.py --quick: the GPU check runs (on the CPU), and its JSON
holds every section with sane numbers.

One subprocess, as a user runs it: the small backbone at 64x64, batch 8 (1.5-2.5 min on
the 2-core development VM, most of it compiling the steps). Its stage-1 and stage-2
steps, inference, CRF, both parallel backends, the input pipeline with a worker
process, the evaluators, the end-to-end CUB recipe through the commands and the
projection all run, so the script cannot rot between GPU sessions.
"""

import json
import math
import os
import subprocess
import sys

from fcam_jax import config_lib
from tests.conftest import REPO

SECTIONS = ("machine", "settings", "steps", "max_batch", "inference", "crf", "parallel",
            "input", "metrics", "e2e", "projection", "targets", "log", "table")


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_check_writes_every_section(tmp_path):
  out = tmp_path / "check.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  p = subprocess.run([sys.executable, "benchmarks/accelerator_check.py", "--quick",
                      f"--out={out}", f"--workdir={tmp_path / 'work'}"],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
  r = json.loads(out.read_text())
  assert set(SECTIONS) <= set(r), set(SECTIONS) - set(r)
  failed = [e for e in r["log"] if e["status"] != "ok"]
  assert not failed, failed  # nothing skipped nor failed in quick mode

  m = r["machine"]
  assert m["backend"] == "cpu" and m["jax"] and m["cpu"] and m["cpus"] >= 1
  assert m["device_memory_limit"] is None  # no memory_stats on the CPU

  steps = {(s["stage"], s["precision"]): s for s in r["steps"]}
  assert set(steps) == {("stage1", "fp32"), ("stage2", "fp32")}
  for s in steps.values():
    assert s["status"] == "ok" and s["batch"] == 8 and s["backbone"] == "small"
    assert _positive(s["images_per_s"]) and _positive(s["first_call_s"])
    assert abs(s["images_per_s"] * s["ms_per_step"] / 1e3 - 8) < 1e-6
    assert 0 <= s["compile_s"] < s["first_call_s"]
  assert sorted(x["parallel"] for x in r["parallel"]) == ["jit", "pmap"]
  assert all(_positive(x["images_per_s"]) for x in r["parallel"])

  (mb,) = r["max_batch"]
  assert mb["largest_fitting"] == 16 and mb["status"] == "cap 16 reached"
  assert mb["first_oom"] is None and mb["fits"][0]["peak_bytes"] is None

  assert {i["method"] for i in r["inference"]} == {"fcam", "gradcam"}
  assert all(_positive(i["maps_per_s"]) for i in r["inference"])
  assert [c["grid_cell"] for c in r["crf"]] == [0.5, 1.0]
  assert all(_positive(c["ms"]) for c in r["crf"])

  inp = r["input"]
  assert inp["status"] == "ok" and set(inp["pipeline"]) == {"0", "1"}
  assert all(_positive(v["images_per_s"]) for v in inp["pipeline"].values())
  assert inp["pipeline"]["1"]["first_batch_s"] > 0 and _positive(inp["decode_per_process"])
  assert len(r["metrics"]) == 3 and all(_positive(x["images_per_s"]) for x in r["metrics"])

  e2e = r["e2e"]
  assert e2e["status"] == "ok", e2e
  assert e2e["stage2"]["test"]["fcam"]["num_images"] == 8  # 8 classes x 1 test image
  assert 0 <= e2e["stage2"]["test"]["fcam"]["MaxBoxAcc"] <= 100
  assert e2e["report_lines"] > 3 and _positive(e2e["main_s"])
  # main reads both steps this process compiled and timed from the cache, not compiling
  # them again (the default backend, fp32: what the recipe trains with).
  default = config_lib.base_config().parallel
  assert e2e["steps_from_cache"] == [f"stage1 fp32 {default}", f"stage2 fp32 {default}"], e2e
  assert e2e["main_cache_hits"] >= 2 and e2e["new_compilation_cache_entries"] >= 0

  proj = r["projection"]["fp32"]
  for recipe in ("CUB", "OpenImages"):
    stages = proj[recipe]
    assert _positive(stages["total_s"])
    assert math.isclose(stages["total_s"],
                        stages["stage1"]["total_s"] + stages["stage2"]["total_s"])
  assert "floor(N_train / 32)" in r["projection"]["formula"]
  assert {t["status"] for t in r["targets"]} <= {"n/a (not the target's sizes)", "not measured"}
  table = r["table"]
  assert table.startswith("| section | item | measured | target | status |")
  assert "| end to end |" in table and "| projection | CUB fp32" in table
  assert table in p.stdout  # printed too
