r"""Runs the variants of a sweep, each into its own workdir, and tabulates them.

  python -m fcam_jax.sweep --config=configs/synthetic.py --sweep=configs/sweeps/loss_terms.py \
      --workdir=/tmp/sweep_loss_terms [--config.key=value ...] [--only=NAME,...] [--shard=K/N]

A sweep file (`configs/sweeps/*.py`) defines `get_sweep(arg=None)`, a list of variants:
dicts of config overrides (`{"fcam.crf.enabled": False}`), optionally with a "name";
`config_lib.product()` and `config_lib.axis()` build the usual grids. `--sweep=file.py:arg` passes `arg`.

Variant `v` runs `train.train_and_evaluate` in `<workdir>/<name of v>`. Running the
command again skips finished variants and resumes the others from their checkpoints;
a variant whose saved config differs from the sweep's is refused (nothing overwritten).
When `config.stages` is `both` and every variant changes only stage-2 keys (`fcam.*`,
`stage2.*`), the classifier is trained once in `<workdir>/classifier` and every
variant trains its decoder on that frozen classifier, as in the paper's ablations.
At the end (and after each variant) `<workdir>/sweep.md` and `sweep.csv` compare the
test metrics of every finished variant: the baseline CAM and F-CAM.
"""

import csv
import importlib.util
import io
import json
import os
import re
import sys
import traceback
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from fcam_jax import config_lib
from fcam_jax import main as main_lib

_SWEEP = flags.DEFINE_string("sweep", None, "A configs/sweeps/*.py file, optionally ':arg'.")
_ONLY = flags.DEFINE_list("only", [], "Run only these variants (names); default all.")
_SHARD = flags.DEFINE_string("shard", "", "K/N: run every N-th variant starting at K (0-based), "
                             "to split a sweep over machines.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the variants and their workdirs; run nothing.")

STAGE2_PREFIXES = ("fcam.", "stage2.")
TABLE_METRICS = ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_loc", "top5_loc", "top1_cls")


def variant_name(overrides: Dict[str, Any]) -> str:
  """The variant's "name", else `key=value,...`; safe as a directory name."""
  name = overrides.get("name") or ",".join(
      f"{k}={v}" for k, v in overrides.items() if k != "name") or "base"
  return re.sub(r"[^\w.,=+-]", "_", str(name))


def load_sweep(spec: str) -> List[Dict[str, Any]]:
  """The variants of `path.py[:arg]`; errors name the file."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"sweep file not found: {path}")
  module_spec = importlib.util.spec_from_file_location("fcam_sweep", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise config_lib.ConfigError(f"{path} has no get_sweep(arg=None)")
  variants = list(module.get_sweep(arg or None))
  if not variants:
    raise config_lib.ConfigError(f"{path}: get_sweep() returned no variants")
  names = [variant_name(v) for v in variants]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise config_lib.ConfigError(f"{path}: variants share the names {', '.join(dupes)}")
  return variants


def apply_overrides(config: ml_collections.ConfigDict, overrides: Dict[str, Any],
                    source: str = "sweep") -> ml_collections.ConfigDict:
  """A validated copy of `config` with `overrides`; unknown keys and bad types name the key."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    if key == "name":
      continue
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise config_lib.ConfigError(f"{source}: unknown config key 'config.{key}'")
      if i < len(parts) - 1:
        node = node[part]
    try:
      node[parts[-1]] = value
    except (TypeError, ValueError) as e:
      raise config_lib.ConfigError(f"{source}: config.{key}={value!r}: {e}") from e
  try:
    return config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"{source}: {e}") from e


def stage2_only(variants: Sequence[Dict[str, Any]]) -> bool:
  keys = {k for v in variants for k in v if k != "name"}
  return bool(keys) and all(k.startswith(STAGE2_PREFIXES) for k in keys)


def _config_diff(saved: Dict, wanted: Dict, prefix: str = "") -> List[str]:
  keys = []
  for k in sorted(set(saved) | set(wanted)):
    a, b = saved.get(k), wanted.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      keys += _config_diff(a, b, f"{prefix}{k}.")
    elif json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
      keys.append(f"{prefix}{k}")
  return keys


def _check_saved_config(workdir: str, config: ml_collections.ConfigDict):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  differ = _config_diff(saved, config.to_dict())
  if differ:
    raise config_lib.ConfigError(
        f"{workdir} holds a run with another config (differs in {', '.join(differ[:6])}): "
        "use another --workdir, or delete that variant's folder to rerun it")


def _finished(workdir: str, config) -> bool:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    results = json.load(f)
  wanted = {"stage1": ("stage1",), "stage2": ("stage2",), "both": ("stage1", "stage2")}
  return all(s in results for s in wanted[config.stages])


def plan(config: ml_collections.ConfigDict, variants: Sequence[Dict[str, Any]], workdir: str
         ) -> List[Dict[str, Any]]:
  """[{name, overrides, workdir, config}] for each variant, plus the shared classifier if any."""
  jobs = []
  shared = config.stages == "both" and stage2_only(variants)
  if shared:
    jobs.append({"name": "classifier", "overrides": {"stages": "stage1"}, "shared": True,
                 "workdir": os.path.join(workdir, "classifier"),
                 "config": apply_overrides(config, {"stages": "stage1"})})
  for v in variants:
    name = variant_name(v)
    overrides = dict(v)
    if shared:
      overrides.update({"stages": "stage2", "stage2.classifier_checkpoint": os.path.join(
          workdir, "classifier", "stage1", "checkpoints")})
    jobs.append({"name": name, "overrides": {k: x for k, x in v.items() if k != "name"},
                 "workdir": os.path.join(workdir, name), "shared": False,
                 "config": apply_overrides(config, overrides, source=f"variant {name}")})
  return jobs


def _metrics(results: Dict) -> Dict[str, Dict[str, float]]:
  s2, s1 = results.get("stage2", {}).get("test", {}), results.get("stage1", {}).get("test", {})
  out = {"cam": s2.get("cam") or s1.get("cam") or {}, "fcam": s2.get("fcam") or {}}
  return {k: {m: float(v[m]) for m in TABLE_METRICS if isinstance(v.get(m), (int, float))}
          for k, v in out.items()}


def table(jobs: Sequence[Dict[str, Any]]) -> tuple:
  """Markdown and CSV of the finished variants' test metrics (baseline CAM, F-CAM)."""
  rows = []
  for job in jobs:
    path = os.path.join(job["workdir"], "results.json")
    if job["shared"] or not os.path.exists(path):
      continue
    with open(path) as f:
      rows.append((job, _metrics(json.load(f))))
  columns = [(kind, m) for kind in ("cam", "fcam") for m in TABLE_METRICS
             if any(m in r[kind] for _, r in rows)]
  keys = sorted({k for job, _ in rows for k in job["overrides"]})
  md = ["| variant | " + " | ".join(keys + [f"{'F-CAM' if k == 'fcam' else 'CAM'} {m}"
                                           for k, m in columns]) + " |",
        "|" + "|".join(["---"] * (1 + len(keys)) + ["---:"] * len(columns)) + "|"]
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["variant"] + keys + [f"{k}/{m}" for k, m in columns])
  for job, r in rows:
    settings = [str(job["overrides"].get(k, "")) for k in keys]
    values = [r[k].get(m) for k, m in columns]
    md.append("| " + " | ".join([job["name"]] + settings + [
        "—" if v is None else f"{v:.1f}" for v in values]) + " |")
    w.writerow([job["name"]] + settings + ["" if v is None else f"{v:.4f}" for v in values])
  return "\n".join(md) + "\n", buf.getvalue()


def _write_tables(workdir: str, jobs):
  md, text = table(jobs)
  with open(os.path.join(workdir, "sweep.md"), "w") as f:
    f.write(md)
  with open(os.path.join(workdir, "sweep.csv"), "w") as f:
    f.write(text)
  return md


def select(jobs, only: Sequence[str] = (), shard: str = ""):
  """The jobs this invocation runs (the shared classifier always, when there is one)."""
  names = {j["name"] for j in jobs}
  unknown = [n for n in only if n not in names]
  if unknown:
    raise config_lib.ConfigError(f"--only: no variant named {', '.join(unknown)}; "
                                 f"the variants are {', '.join(sorted(names))}")
  picked = [j for j in jobs if j["shared"] or not only or j["name"] in only]
  if shard:
    m = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not m or int(m.group(1)) >= int(m.group(2)):
      raise config_lib.ConfigError(f"--shard={shard!r}: expected K/N with 0 <= K < N")
    k, n = int(m.group(1)), int(m.group(2))
    variants = [j for j in picked if not j["shared"]]
    picked = [j for j in picked if j["shared"]] + variants[k::n]
  return picked


def run_sweep(config: ml_collections.ConfigDict, variants: Sequence[Dict[str, Any]],
              workdir: str, only: Sequence[str] = (), shard: str = "",
              dry_run: bool = False) -> Dict[str, str]:
  """Runs the selected variants; returns {name: 'done' | 'skipped' | 'failed: ...'}."""
  from fcam_jax import train  # pylint: disable=g-import-not-at-top
  jobs = plan(config, variants, workdir)
  picked = select(jobs, only, shard)
  for job in picked:
    _check_saved_config(job["workdir"], job["config"])
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump([{"name": j["name"], "overrides": j["overrides"], "workdir": j["workdir"]}
               for j in jobs], f, indent=2, default=str)
  status = {}
  for i, job in enumerate(picked):
    line = f"[{i + 1}/{len(picked)}] {job['name']}: {job['workdir']}"
    if dry_run:
      print(line, json.dumps(job["overrides"], default=str))
      continue
    if _finished(job["workdir"], job["config"]):
      logging.info("%s (finished, skipped)", line)
      status[job["name"]] = "skipped"
      continue
    logging.info("%s", line)
    try:
      train.train_and_evaluate(job["config"], job["workdir"])
      status[job["name"]] = "done"
    except train.Preempted:
      raise  # a checkpoint is saved; the same command resumes the sweep
    except Exception as e:  # pylint: disable=broad-except
      if job["shared"]:
        raise
      logging.error("variant %s failed:\n%s", job["name"], traceback.format_exc())
      status[job["name"]] = f"failed: {type(e).__name__}: {e}"
    _write_tables(workdir, jobs)
  if not dry_run:
    print(_write_tables(workdir, jobs))
  return status


def main(argv):
  if len(argv) > 1:
    main_lib.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _SWEEP.value:
    main_lib.fail("--sweep is required")
  try:
    config = config_lib.validate(main_lib.CONFIG.value)
    from fcam_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize_from_config(config)
    variants = load_sweep(_SWEEP.value)
    status = run_sweep(config, variants, main_lib.WORKDIR.value, _ONLY.value,
                       _SHARD.value, _DRY_RUN.value)
  except config_lib.ConfigError as e:
    main_lib.fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    from fcam_jax import train  # pylint: disable=g-import-not-at-top
    if isinstance(e, train.Preempted):
      print(str(e), file=sys.stderr)
      sys.exit(0)
    from fcam_jax import checkpoint, weights  # pylint: disable=g-import-not-at-top
    if isinstance(e, (checkpoint.CheckpointNotFoundError, FileNotFoundError,
                      weights.PretrainedError)):
      main_lib.fail(str(e))
    raise
  failed = {k: v for k, v in status.items() if v.startswith("failed")}
  for name, why in failed.items():
    print(f"error: variant {name} {why}", file=sys.stderr)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
