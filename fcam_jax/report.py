r"""Collects finished runs into the paper's tables: `python -m fcam_jax.report RUN_DIR...`.

  python -m fcam_jax.report $WORK/cub_* $WORK/oi_* [--out=DIR] [--metrics=MaxBoxAcc,PxAP] \
      [--allow_duplicates]

Each RUN_DIR is a `python -m fcam_jax.main` workdir (its `results.json`) or a folder
searched recursively for them (a sweep or grid directory). Runs are grouped by
dataset, CAM method and backbone (`config.dataset.name`, `config.cam.method`,
`config.model.backbone`); repeated runs of one cell (other seeds) are averaged and
their count and standard deviation kept in the CSV. The same run found twice (two
results.json with the same config and seed, e.g. a workdir and its copy) is refused:
averaging it with itself would fake a second seed (`--allow_duplicates` counts it once
and says so). The baseline row is the CAM of the classifier stage 2 used
(`stage2.test.cam`), else the stage-1 test CAM; the "+ F-CAM" row is `stage2.test.fcam`.

Prints Markdown (Table 1 layout: methods x backbones, one table per dataset and
metric; each cell `ours (paper)`, the paper's Tables 1-2 where it reports the value)
and writes `report.md` and `report.csv` (one row per cell and metric) to `--out`.
Exit status 2 (one `error:` line) for bad flags, a RUN_DIR that does not exist, or runs
that cannot share a table (configs that differ in a cell, the same run twice); 1 for an
unreadable or unfinished results.json.
"""

import collections
import csv
import io
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np

from fcam_jax import cams
from fcam_jax import cli
from fcam_jax import config_lib
from fcam_jax import files
from fcam_jax import metrics as metrics_lib
from fcam_jax import models

METRICS = metrics_lib.REPORTED
BACKBONE_ORDER = ("vgg16", "inceptionv3", "resnet50", "small")  # the paper's column order


def _paper_table(rows: Sequence[Tuple[float, ...]]) -> Dict:
  """{(method, fcam): {backbone: value}} from rows in the paper's column order.

  Columns: VGG, Inception, ResNet and, in Table 1, the published Mean (kept as
  printed: it is not always the mean of the three).
  """
  out = {}
  for i, values in enumerate(rows):
    method, fcam = cams.PAPER_METHODS[i % 6], i >= 6
    out[(method, fcam)] = dict(zip(("vgg16", "inceptionv3", "resnet50", "mean"), values))
  return out


# The paper's Table 1 (CUB MaxBoxAcc, OpenImages PxAP) and Table 2 (CUB Top-1 / Top-5 Loc):
# the six baselines, then the same six + F-CAM ("ours"); Table 1 rows end with its Mean.
PAPER = {
    ("CUB", "MaxBoxAcc"): _paper_table([
        (61.6, 58.8, 71.5, 63.9), (69.3, 62.3, 73.1, 68.2), (84.1, 63.3, 81.9, 76.4),
        (69.7, 66.9, 76.3, 70.9), (69.3, 60.9, 72.7, 67.6), (84.3, 66.5, 85.2, 78.6),
        (87.3, 82.0, 90.3, 86.5), (87.5, 84.4, 90.5, 87.4), (91.5, 84.6, 91.0, 89.0),
        (89.1, 86.8, 90.7, 88.8), (86.8, 84.4, 90.4, 88.8), (91.0, 85.3, 92.4, 89.7)]),
    ("OpenImages", "PxAP"): _paper_table([
        (53.0, 62.7, 56.8, 57.5), (59.6, 63.9, 60.1, 61.2), (60.5, 64.0, 60.2, 61.5),
        (52.2, 61.7, 54.3, 56.0), (59.0, 63.9, 60.2, 61.0), (59.5, 63.5, 61.1, 61.3),
        (67.8, 71.9, 72.1, 70.6), (68.6, 70.0, 70.9, 69.8), (64.8, 67.1, 66.3, 66.0),
        (60.3, 65.4, 64.4, 63.3), (68.7, 71.3, 70.4, 70.1), (64.3, 64.9, 65.3, 64.8)]),
    ("CUB", "top1_loc"): _paper_table([
        (33.5, 40.9, 47.8), (18.5, 41.6, 32.3), (20.8, 41.4, 34.7),
        (17.7, 44.4, 33.1), (18.5, 40.9, 48.3), (24.8, 43.9, 44.2),
        (44.0, 54.6, 59.1), (22.1, 56.1, 38.8), (23.2, 55.9, 39.0),
        (22.9, 57.3, 38.9), (22.0, 55.8, 59.3), (23.1, 56.4, 47.7)]),
    ("CUB", "top5_loc"): _paper_table([
        (52.7, 54.8, 66.5), (41.7, 56.2, 56.4), (47.5, 56.8, 61.4),
        (40.2, 60.2, 57.7), (41.7, 55.2, 67.3), (47.8, 59.7, 70.3),
        (70.1, 73.8, 82.6), (50.0, 75.4, 68.5), (52.0, 76.0, 68.9),
        (51.2, 77.6, 68.6), (49.6, 75.3, 82.7), (51.9, 76.6, 76.1)]),
}

# The table each dataset leads with in the paper (Table 1); the others follow.
HEADLINE = {"CUB": "MaxBoxAcc", "OpenImages": "PxAP", "ILSVRC": "MaxBoxAcc",
            "synthetic": "MaxBoxAcc"}


class ReportError(ValueError):
  """An unreadable or incomplete results.json; the message names the file."""


class MixedRunsError(ReportError):
  """Runs that cannot share a table cell: other configs, or the same run twice."""


def find_results(paths: Iterable[str]) -> List[str]:
  """The top-level `results.json` of each run under `paths` (files, workdirs or parents),
  in the order given (folders walked in sorted order)."""
  found = []
  for path in paths:
    if os.path.isfile(path):
      found.append(path)
      continue
    if not os.path.isdir(path):
      raise ReportError(f"{path}: no such file or directory")
    before = len(found)
    for root, dirs, files in os.walk(path):
      dirs.sort()
      if "results.json" in files and os.path.basename(root) not in ("stage1", "stage2"):
        found.append(os.path.join(root, "results.json"))
    if len(found) == before:
      raise ReportError(f"{path}: no results.json under it (is the run finished?)")
  unique = {}  # in the order given; the same file reached by two paths is one file
  for path in found:
    unique.setdefault(os.path.realpath(path), path)
  return list(unique.values())


def _get(d: Dict, dotted: str):
  try:
    return config_lib.get(d, dotted)
  except KeyError:
    return None


def read_run(path: str) -> Dict:
  """{dataset, backbone, method, path, baseline: metrics, fcam: metrics or None}."""
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"{path}: unreadable results.json ({e})") from e
  keys = {"dataset": "config.dataset.name", "backbone": "config.model.backbone",
          "method": "config.cam.method"}
  run = {"path": path}
  for name, key in keys.items():
    run[name] = _get(results, key)
    if not isinstance(run[name], str):
      raise ReportError(f"{path}: no {key} (not a fcam_jax results.json?)")
  baseline = _get(results, "stage2.test.cam") or _get(results, "stage1.test.cam")
  if baseline is None:
    raise ReportError(f"{path}: no test metrics (stage1.test.cam or stage2.test.cam): "
                      "the run has not finished")
  run["baseline"] = _scalars(baseline)
  fcam = _get(results, "stage2.test.fcam")
  run["fcam"] = _scalars(fcam) if fcam is not None else None
  run["config"] = dict(config_lib.flatten(results["config"]))
  return run


# Keys that may differ between repeated runs of one cell (seeds, paths, I/O tuning).
_REPEAT_KEYS = ("seed", "stages", "dataset.data_dir", "dataset.data_root", "dataset.metadata_root",
                "dataset.mask_root", "model.pretrained", "stage2.classifier_checkpoint",
                "data.num_workers", "data.read_threads", "data.prefetch", "log_every_steps",
                "checkpoint_every_epochs", "eval.batch_size", "eval.num_figures",
                "eval.save_scoremaps")


def _identity(run: Dict) -> Tuple[str, str]:
  """What makes a run the run it is: its cell and config, seed included, without the
  paths and I/O settings (a copied or moved workdir is the same run)."""
  config = {k: v for k, v in run["config"].items() if k == "seed" or k not in _REPEAT_KEYS}
  return (run["dataset"], run["method"], run["backbone"],
          json.dumps(config, sort_keys=True, default=str))


def drop_duplicates(runs: Sequence[Dict], allow: bool = False
                    ) -> Tuple[List[Dict], List[Tuple[Dict, Dict]]]:
  """(the runs with each run once, [(dropped copy, the run kept)]). Two results.json
  with the same config and seed are one run (a copy, or the same run reached twice):
  refused (MixedRunsError naming both) unless `allow`, then the first is kept."""
  kept, dropped, first = [], [], {}
  for run in runs:
    original = first.setdefault(_identity(run), run)
    if original is run:
      kept.append(run)
      continue
    if not allow:
      raise MixedRunsError(
          f"{run['path']} is the same run as {original['path']} (same config and seed "
          f"{run['config'].get('seed')}): counting both would average a run with itself; "
          "pass one of them, or --allow_duplicates to count it once")
    dropped.append((run, original))
  return kept, dropped


def _scalars(metrics: Dict) -> Dict[str, float]:
  return {k: float(metrics[k]) for k in METRICS if isinstance(metrics.get(k), (int, float))}


Cell = Tuple[str, str, bool, str]  # dataset, method, fcam, backbone


def aggregate(runs: Sequence[Dict]) -> Dict[Cell, Dict[str, List[float]]]:
  """{(dataset, method, fcam, backbone): {metric: [value per run]}}."""
  cells = collections.defaultdict(lambda: collections.defaultdict(list))
  first = {}
  for run in runs:
    key = (run["dataset"], run["method"], run["backbone"])
    other = first.setdefault(key, run)
    differ = sorted(k for k in set(run["config"]) | set(other["config"])
                    if k not in _REPEAT_KEYS and run["config"].get(k) != other["config"].get(k))
    if differ:
      raise MixedRunsError(
          f"{other['path']} and {run['path']} fill the same cell ({', '.join(key)}) but their "
          f"configs differ in {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}: "
          "report them separately (variants of a sweep: python -m fcam_jax.sweep writes their table)")
    for fcam, metrics in ((False, run["baseline"]), (True, run["fcam"])):
      if metrics is None:
        continue
      for k, v in metrics.items():
        cells[(run["dataset"], run["method"], fcam, run["backbone"])][k].append(v)
  return cells


def paper_value(dataset: str, metric: str, method: str, fcam: bool, backbone: str
                ) -> Optional[float]:
  return PAPER.get((dataset, metric), {}).get((method, fcam), {}).get(backbone)


def _order(values, order):
  return sorted(values, key=lambda v: (order.index(v) if v in order else len(order), v))


def _fmt(x: Optional[float]) -> str:
  return "—" if x is None else f"{x:.1f}"


def markdown(cells, metrics: Optional[Sequence[str]] = None) -> str:
  """One Table-1-style table per dataset and metric: `ours (paper)` per backbone, and the mean."""
  out = []
  for dataset in sorted({c[0] for c in cells}):
    keys = [c for c in cells if c[0] == dataset]
    backbones = _order({c[3] for c in keys}, BACKBONE_ORDER)
    methods = _order({c[1] for c in keys}, cams.METHODS)
    present = {m for c in keys for m in cells[c]}
    wanted = [m for m in (metrics or METRICS) if m in present]
    wanted.sort(key=lambda m: m != HEADLINE.get(dataset))
    for metric in wanted:
      out.append(f"### {dataset}: {metrics_lib.DISPLAY_NAMES[metric]}\n")
      with_mean = len(backbones) > 1
      header = (["Method"] + [models.DISPLAY_NAMES.get(b, b) for b in backbones]
                + (["Mean"] if with_mean else []))
      out.append("| " + " | ".join(header) + " |")
      out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
      for fcam in (False, True):
        for method in methods:
          if not any((dataset, method, fcam, b) in cells for b in backbones):
            continue
          row, ours_all, paper_all = [], [], []
          for b in backbones:
            values = cells.get((dataset, method, fcam, b), {}).get(metric)
            ours = float(np.mean(values)) if values else None
            paper = paper_value(dataset, metric, method, fcam, b)
            ours_all.append(ours)
            paper_all.append(paper)
            cell = _fmt(ours) + (f" ({paper:.1f})" if paper is not None else "")
            if values and len(values) > 1:
              cell += f" ±{np.std(values):.1f} n={len(values)}"
            row.append(cell)
          if with_mean:  # over the backbones, like the paper's Mean column
            mean = float(np.mean(ours_all)) if None not in ours_all else None
            pmean = paper_value(dataset, metric, method, fcam, "mean")
            row.append(_fmt(mean) + (f" ({pmean:.1f})" if pmean is not None else ""))
          name = cams.DISPLAY_NAMES.get(method, method) + (" + F-CAM" if fcam else "")
          out.append("| " + " | ".join([name] + row) + " |")
      out.append("")
  out.append("Cells: ours (paper's value, where Tables 1-2 report it); ± std and n over repeated "
             "runs. Baseline = the CAM of the frozen classifier stage 2 used.")
  return "\n".join(out) + "\n"


def csv_text(cells) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["dataset", "method", "fcam", "backbone", "metric", "mean", "std", "n", "paper"])
  for (dataset, method, fcam, backbone) in sorted(cells, key=lambda c: (
      c[0], cams.METHODS.index(c[1]) if c[1] in cams.METHODS else 99, c[2], c[3])):
    for metric in METRICS:
      values = cells[(dataset, method, fcam, backbone)].get(metric)
      if not values:
        continue
      paper = paper_value(dataset, metric, method, fcam, backbone)
      w.writerow([dataset, method, int(fcam), backbone, metric, f"{np.mean(values):.4f}",
                  f"{np.std(values):.4f}", len(values), "" if paper is None else paper])
  return buf.getvalue()


def report(paths: Sequence[str], out: str = "", metrics: Optional[Sequence[str]] = None,
           allow_duplicates: bool = False) -> Tuple[str, str]:
  """Markdown and CSV of the runs under `paths`; written to `out` when given.

  The same run found twice (same config and seed: `drop_duplicates`) is refused, or with
  `allow_duplicates` counted once and listed under the run count.
  """
  runs = [read_run(p) for p in find_results(paths)]
  runs, dropped = drop_duplicates(runs, allow_duplicates)
  cells = aggregate(runs)
  head = f"Runs: {len(runs)}"
  if dropped:
    head += (f" ({len(dropped)} duplicate{'s' if len(dropped) > 1 else ''} counted once: "
             + "; ".join(f"{d['path']} = {o['path']}" for d, o in dropped) + ")")
  md = f"{head}\n\n" + markdown(cells, metrics)
  table = csv_text(cells)
  if out:
    os.makedirs(out, exist_ok=True)
    files.write_atomic(os.path.join(out, "report.md"), md)
    files.write_atomic(os.path.join(out, "report.csv"), table)
  return md, table


def define_flags():
  """The command's flags (defined only when run as a command: other modules use these names)."""
  flags.DEFINE_string("out", "", "Folder for report.md and report.csv (default: print only).")
  flags.DEFINE_list("metrics", [], f"Metrics to tabulate (default all of {METRICS}).")
  flags.DEFINE_bool("allow_duplicates", False, "Count a run found twice (same config and "
                    "seed, e.g. a copied workdir) once instead of refusing.")


def main(argv):
  if len(argv) < 2:
    cli.fail("no RUN_DIR given: python -m fcam_jax.report RUN_DIR [RUN_DIR...] [--out=DIR]")
  out, wanted = flags.FLAGS.out, flags.FLAGS.metrics
  unknown = [m for m in wanted if m not in METRICS]
  if unknown:
    cli.fail(f"--metrics: unknown {', '.join(unknown)}; known: {', '.join(METRICS)}")
  missing = [p for p in argv[1:] if not os.path.exists(p)]
  if missing:
    cli.fail(f"{missing[0]}: no such file or directory")
  md, _ = report(argv[1:], out, wanted or None, flags.FLAGS.allow_duplicates)
  print(md)


if __name__ == "__main__":
  define_flags()
  # Runs that cannot share a table (the command line's choice): 2; unreadable results: 1.
  cli.run(main, usage_errors=(MixedRunsError,), data_errors=(ReportError, OSError))
