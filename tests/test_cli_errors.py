"""Every command ends bad input in one `error:` line, exit 2 (usage) or 1 (data), no traceback.

One subprocess per case, the way a script calls the commands. Cases are cheap: each
fails before any training or compilation. Run this file as a script to print the
table of cases with the line each prints (`python tests/test_cli_errors.py`).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fcam_jax.data import cub_like
from fcam_jax.data import prepare_cub

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USAGE, DATA = 2, 1

# absl / C++ logging lines (I1207 07:29:01.123 ...), not the command's own output.
_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|\s*$)")


def build(root: str) -> dict:
  """Good and bad inputs under `root`; {name: path}."""
  p = {name: os.path.join(root, name) for name in (
      "cub", "meta", "bad_meta", "maps", "nan_maps", "run", "bad_run", "copy", "empty",
      "bad_cub", "csv_images")}
  cub_like.write_release(p["cub"], num_classes=2, train_per_class=3, test_per_class=2,
                         size=(24, 24))
  prepare_cub.convert(p["cub"], p["meta"], val_per_class=1)
  p["images"] = os.path.join(p["cub"], "images")
  # Metadata with a malformed box on line 2 of test/localization.txt.
  shutil.copytree(p["meta"], p["bad_meta"])
  loc = os.path.join(p["bad_meta"], "test", "localization.txt")
  lines = open(loc).read().splitlines()
  lines[1] = lines[1].rsplit(",", 1)[0]
  open(loc, "w").write("\n".join(lines) + "\n")
  # Score maps for every test image but the last; a copy with a NaN map.
  ids = open(os.path.join(p["meta"], "test", "image_ids.txt")).read().split()
  p["missing_id"] = ids[-1]
  for image_id in ids[:-1]:
    path = os.path.join(p["maps"], os.path.splitext(image_id)[0] + ".npy")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.zeros((8, 8), np.float32))
  shutil.copytree(p["maps"], p["nan_maps"])
  np.save(os.path.join(p["nan_maps"], os.path.splitext(ids[-1])[0] + ".npy"),
          np.full((8, 8), np.nan, np.float32))
  p["nan_id"] = ids[-1]
  # A finished run's results.json, a copy of it, an unreadable one, an empty workdir.
  from fcam_jax import config_lib  # pylint: disable=g-import-not-at-top
  results = {"config": config_lib.base_config().to_dict(),
             "stage1": {"test": {"cam": {"num_images": 4, "MaxBoxAcc": 50.0}}}}
  os.makedirs(p["run"])
  json.dump(results, open(os.path.join(p["run"], "results.json"), "w"))
  shutil.copytree(p["run"], p["copy"])
  os.makedirs(p["bad_run"])
  open(os.path.join(p["bad_run"], "results.json"), "w").write('{"config": ')
  os.makedirs(p["empty"])
  # A CUB release whose bounding_boxes.txt line 3 has 3 numbers.
  shutil.copytree(p["cub"], p["bad_cub"])
  boxes = os.path.join(p["bad_cub"], "bounding_boxes.txt")
  lines = open(boxes).read().splitlines()
  lines[2] = "3 1.0 2.0 3.0"
  open(boxes, "w").write("\n".join(lines) + "\n")
  # A CSV with a short row (line 2), a state dict that is not one, a file that is not .npz.
  p["bad_csv"] = os.path.join(root, "boxes.csv")
  open(p["bad_csv"], "w").write("image,label,x0,y0,x1,y1\na.jpg,gull,1,2\n")
  os.makedirs(p["csv_images"])
  p["garbage_npz"] = os.path.join(root, "garbage.npz")
  open(p["garbage_npz"], "wb").write(b"not a zip file")
  p["sweep"] = os.path.join(REPO, "configs", "sweeps", "loss_terms.py")
  return p


CUB_DATA = lambda p: [f"--config.dataset.data_root={p['images']}",  # noqa: E731
                      f"--config.dataset.metadata_root={p['meta']}"]

# (command, what is wrong, argv(paths), exit code, a piece of the line printed)
CASES = [
    ("main", "unknown flag", lambda p: ["--config=configs/cub.py", f"--workdir={p['empty']}",
                                        "--bogus"], USAGE, "Unknown command line flag 'bogus'"),
    ("main", "unknown config key", lambda p: [
        "--config=configs/cub.py", f"--workdir={p['empty']}", "--config.model.backbon=vgg16"],
     USAGE, "unknown config key 'config.model.backbon'"),
    ("main", "missing metadata folder", lambda p: [
        "--config=configs/cub.py", f"--workdir={p['empty']}/w",
        f"--config.dataset.data_root={p['images']}", "--config.dataset.metadata_root=/no/meta"],
     DATA, "/no/meta/train/image_ids.txt: file not found"),
    ("main", "malformed metadata line", lambda p: [
        "--config=configs/cub.py", f"--workdir={p['empty']}/w2",
        f"--config.dataset.data_root={p['images']}",
        f"--config.dataset.metadata_root={p['bad_meta']}"], DATA, "localization.txt:2"),
    ("predict", "workdir does not exist", lambda p: [
        "--workdir=/no/run", f"--input={p['images']}", f"--output={p['empty']}/o"],
     USAGE, "--workdir=/no/run: no such folder"),
    ("predict", "workdir without a run", lambda p: [
        f"--workdir={p['empty']}", f"--input={p['images']}", f"--output={p['empty']}/o"],
     DATA, "no config in workdir"),
    ("predict", "threshold out of range", lambda p: [
        f"--workdir={p['run']}", f"--input={p['images']}", f"--output={p['empty']}/o",
        "--threshold=2"], USAGE, "--threshold=2.0: must be in [0, 1]"),
    ("sweep", "sweep file missing", lambda p: [
        "--config=configs/synthetic.py", f"--workdir={p['empty']}/s",
        "--sweep=configs/sweeps/nope.py"], USAGE, "sweep file not found"),
    ("sweep", "unknown variant", lambda p: [
        "--config=configs/synthetic.py", f"--workdir={p['empty']}/s", f"--sweep={p['sweep']}",
        "--only=nope", "--dry_run"], USAGE, "--only: no variant named nope"),
    ("report", "no RUN_DIR", lambda p: [], USAGE, "no RUN_DIR given"),
    ("report", "RUN_DIR does not exist", lambda p: ["/no/run"], USAGE,
     "/no/run: no such file or directory"),
    ("report", "unreadable results.json", lambda p: [p["bad_run"]], DATA,
     "unreadable results.json"),
    ("report", "a run and its copy", lambda p: [p["run"], p["copy"]], USAGE,
     "is the same run as"),
    ("evaluate_scoremaps", "score-map folder missing", lambda p: [
        f"--metadata_root={p['meta']}", "--scoremap_root=/no/maps", "--dataset=CUB"],
     USAGE, "--scoremap_root=/no/maps: no such folder"),
    ("evaluate_scoremaps", "a map missing", lambda p: [
        f"--metadata_root={p['meta']}", f"--scoremap_root={p['maps']}", "--dataset=CUB"],
     DATA, "no score map"),
    ("evaluate_scoremaps", "a NaN map", lambda p: [
        f"--metadata_root={p['meta']}", f"--scoremap_root={p['nan_maps']}", "--dataset=CUB"],
     DATA, "contains NaN"),
    ("evaluate_scoremaps", "malformed metadata line", lambda p: [
        f"--metadata_root={p['bad_meta']}", f"--scoremap_root={p['maps']}", "--dataset=CUB"],
     DATA, "localization.txt:2"),
    ("evaluate_scoremaps", "unknown dataset", lambda p: [
        f"--metadata_root={p['meta']}", f"--scoremap_root={p['maps']}", "--dataset=CUBS"],
     USAGE, "--dataset=CUBS: value should be one of"),
    ("data.checks", "no --config", lambda p: [], USAGE, "--config must have a value"),
    ("data.checks", "missing metadata folder", lambda p: [
        "--config=configs/cub.py", f"--config.dataset.data_root={p['images']}",
        "--config.dataset.metadata_root=/no/meta"], DATA, "/no/meta/train/image_ids.txt"),
    ("data.prepare_cub", "cub_root does not exist", lambda p: [
        "--cub_root=/no/cub", f"--out={p['empty']}/m"], USAGE,
     "--cub_root=/no/cub: no such folder"),
    ("data.prepare_cub", "malformed release line", lambda p: [
        f"--cub_root={p['bad_cub']}", f"--out={p['empty']}/m"], DATA,
     "bounding_boxes.txt:3: malformed line"),
    ("data.convert", "CSV does not exist", lambda p: [
        "csv", "--csv=/no/boxes.csv", f"--images={p['csv_images']}", f"--out={p['empty']}/c",
        "--split=train"], USAGE, "--csv=/no/boxes.csv: no such file"),
    ("data.convert", "malformed CSV row", lambda p: [
        "csv", f"--csv={p['bad_csv']}", f"--images={p['csv_images']}", f"--out={p['empty']}/c",
        "--split=train"], DATA, "boxes.csv:2: 4 fields"),
    ("weights.convert", "input does not exist", lambda p: [
        "--arch", "resnet50", "--input", "/no/r50.pth", "--output", f"{p['empty']}/r.npz"],
     USAGE, "--input=/no/r50.pth: no such file"),
    ("weights.convert", "input is not a state dict", lambda p: [
        "--arch", "resnet50", "--input", p["garbage_npz"], "--output", f"{p['empty']}/r.npz"],
     DATA, "garbage.npz"),
    ("weights.convert", "output not .npz", lambda p: [
        "--arch", "resnet50", "--input", p["garbage_npz"], "--output", f"{p['empty']}/r.pt"],
     USAGE, "--output must end with .npz"),
]


def run(command: str, argv) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"fcam_jax.{command}", *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def error_lines(stderr: str):
  return [line for line in stderr.splitlines() if not _LOG_LINE.match(line)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  return build(str(tmp_path_factory.mktemp("bad_inputs")))


@pytest.mark.parametrize("command,what,argv,code,piece", CASES,
                         ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input_is_one_error_line(paths, command, what, argv, code, piece):
  del what
  proc = run(command, argv(paths))
  lines = error_lines(proc.stderr)
  assert "Traceback" not in proc.stderr, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert piece in lines[0], lines[0]
  assert proc.returncode == code, (proc.returncode, lines[0])


def test_verbose_shows_the_traceback_and_keeps_the_line_and_code(paths):
  proc = run("evaluate_scoremaps", [f"--metadata_root={paths['meta']}",
                                    f"--scoremap_root={paths['maps']}", "--dataset=CUB",
                                    "--verbose"])
  assert proc.returncode == DATA
  assert "Traceback (most recent call last)" in proc.stderr and "ScoremapError" in proc.stderr
  assert error_lines(proc.stderr)[-1].startswith(f"error: {paths['missing_id']}: no score map")


if __name__ == "__main__":  # the table of cases, for the docs and reviews
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    built = build(tmp)
    print("| command | bad input | exit | line printed |\n|---|---|---:|---|")
    for command, what, argv, code, _ in CASES:
      proc = run(command, argv(built))
      line = " / ".join(error_lines(proc.stderr)).replace(tmp, "$TMP").replace("|", "\\|")
      print(f"| {command} | {what} | {proc.returncode} | `{line}` |")
