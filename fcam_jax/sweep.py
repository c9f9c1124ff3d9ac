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
import io
import json
import os
import re
import sys
import traceback
from typing import Any, Dict, List, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

from fcam_jax import checkpoint
from fcam_jax import cli
from fcam_jax import config_lib
from fcam_jax import distributed
from fcam_jax import files
from fcam_jax import metrics
from fcam_jax import train
from fcam_jax import weights
from fcam_jax.data import images
from fcam_jax.data import metadata

STAGE2_PREFIXES = ("fcam.", "stage2.")


def define_flags():
  flags.DEFINE_string("workdir", None, "Folder of the sweep: one workdir per variant.")
  config_flags.DEFINE_config_file("config", None, "The base configs/*.py file, optionally "
                                  "with ':arg'.", lock_config=True)
  flags.DEFINE_string("sweep", None, "A configs/sweeps/*.py file, optionally ':arg'.")
  flags.DEFINE_list("only", [], "Run only these variants (names); default all.")
  flags.DEFINE_string("shard", "", "K/N: run every N-th variant starting at K (0-based), "
                      "to split a sweep over machines.")
  flags.DEFINE_bool("dry_run", False, "List the variants and their workdirs; run nothing.")
  flags.mark_flags_as_required(["config", "workdir"])


def variant_name(overrides: Dict[str, Any]) -> str:
  """The variant's "name", else `key=value,...`; safe as a directory name."""
  name = overrides.get("name") or ",".join(
      f"{k}={v}" for k, v in overrides.items() if k != "name") or "base"
  return re.sub(r"[^\w.,=+-]", "_", str(name))


def load_sweep(spec: str) -> List[Dict[str, Any]]:
  """The variants of `path.py[:arg]`; errors name the file."""
  path = spec.partition(":")[0]
  variants = list(cli.load_python_file(spec, "get_sweep", kind="sweep"))
  if not variants:
    raise config_lib.ConfigError(f"{path}: get_sweep() returned no variants")
  names = [variant_name(v) for v in variants]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise config_lib.ConfigError(f"{path}: variants share the names {', '.join(dupes)}")
  return variants


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
                 "config": config_lib.override(config, {"stages": "stage1"}, "sweep")})
  for v in variants:
    name = variant_name(v)
    overrides = {k: x for k, x in v.items() if k != "name"}
    if shared:
      overrides.update({"stages": "stage2", "stage2.classifier_checkpoint": os.path.join(
          workdir, "classifier", "stage1", "checkpoints")})
    jobs.append({"name": name, "overrides": {k: x for k, x in v.items() if k != "name"},
                 "workdir": os.path.join(workdir, name), "shared": False,
                 "config": config_lib.override(config, overrides, f"variant {name}")})
  return jobs


def _metrics(results: Dict) -> Dict[str, Dict[str, float]]:
  s2, s1 = results.get("stage2", {}).get("test", {}), results.get("stage1", {}).get("test", {})
  out = {"cam": s2.get("cam") or s1.get("cam") or {}, "fcam": s2.get("fcam") or {}}
  return {k: {m: float(v[m]) for m in metrics.REPORTED if isinstance(v.get(m), (int, float))}
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
  columns = [(kind, m) for kind in ("cam", "fcam") for m in metrics.REPORTED
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
  files.write_atomic(os.path.join(workdir, "sweep.md"), md)
  files.write_atomic(os.path.join(workdir, "sweep.csv"), text)
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
  jobs = plan(config, variants, workdir)
  picked = select(jobs, only, shard)
  for job in picked:
    _check_saved_config(job["workdir"], job["config"])
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, "sweep.json"),
                   [{"name": j["name"], "overrides": j["overrides"], "workdir": j["workdir"]}
                    for j in jobs])
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
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if not f.sweep:
    cli.fail("--sweep is required")
  try:
    config = config_lib.validate(f.config)
    distributed.initialize_from_config(config)
    variants = load_sweep(f.sweep)
    status = run_sweep(config, variants, f.workdir, f.only, f.shard, f.dry_run)
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    sys.exit(0)
  failed = {k: v for k, v in status.items() if v.startswith("failed")}
  for name, why in failed.items():
    print(f"error: variant {name} {why}", file=sys.stderr)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  define_flags()
  # The shared classifier's data and checkpoints (a variant's failure is listed, not raised).
  cli.run(main, data_errors=(checkpoint.CheckpointNotFoundError, weights.PretrainedError,
                             metadata.MetadataError, images.ImageError, train.NonFiniteError,
                             OSError),
          flags_parser=cli.parse_config_flags)
