"""evaluate_scoremaps end to end on miniature metadata trees (CUB boxes, OpenImages masks)."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest

from fcam_jax import evaluate_scoremaps as es

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location(
    "straightforward_metrics", os.path.join(HERE, "metrics", "straightforward.py"))
sf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sf)

S = 224


def _write(directory, files):
  os.makedirs(directory, exist_ok=True)
  for name, lines in files.items():
    with open(os.path.join(directory, name), "w") as f:
      f.write("".join(line + "\n" for line in lines))


def bilinear_half_pixel(a, size):
  """Plain numpy bilinear resize, pixel centres at +0.5, edges clamped (as cv2 INTER_LINEAR)."""
  def axis(n_in):
    src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo
  (y0, y1, fy), (x0, x1, fx) = axis(a.shape[0]), axis(a.shape[1])
  rows = a[y0] * (1 - fy)[:, None] + a[y1] * fy[:, None]
  return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def test_resize_matches_half_pixel_bilinear():
  rng = np.random.default_rng(0)
  for shape in ((28, 28), (7, 13), (300, 250)):
    a = rng.random(shape)
    np.testing.assert_allclose(es.resize_bilinear(a, S), bilinear_half_pixel(a, S), atol=1e-6)
  assert es.resize_bilinear(np.ones((5, 5)), S).max() <= 1.0


BOXES = {"c/a.jpg": ((448, 448), [[120, 100, 159, 139]]),
         "c/b.jpg": ((224, 224), [[0, 0, 50, 50], [100, 100, 200, 220]]),
         "d/c.jpg": ((100, 50), [[10, 5, 60, 45]])}


@pytest.fixture
def cub(tmp_path):
  meta, maps = str(tmp_path / "meta"), str(tmp_path / "maps")
  ids = list(BOXES)
  _write(os.path.join(meta, "test"), {
      "image_ids.txt": ids,
      "class_labels.txt": [f"{i},{k}" for k, i in enumerate(ids)],
      "image_sizes.txt": [f"{i},{w},{h}" for i, ((w, h), _) in BOXES.items()],
      "localization.txt": [f"{i},{','.join(map(str, b))}" for i, (_, bs) in BOXES.items()
                           for b in bs],
  })
  rng = np.random.default_rng(0)
  a = np.zeros((S, S))
  a[50:70, 60:80] = 1.0                       # the 20 x 20 square: IoU 0.907 with a.jpg
  b = np.zeros((56, 56))
  b[25:55, 24:50] = 0.8                       # saved at 56 x 56: resized to 224
  b[2:12, 2:12] = 0.4
  c = bilinear_half_pixel(rng.random((14, 14)) ** 2, S).astype(np.float32)  # float32 is accepted
  for image_id, m in zip(ids, (a, b, c)):
    path = os.path.join(maps, os.path.splitext(image_id)[0] + ".npy")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, m)
  return meta, maps, [a, bilinear_half_pixel(b, S), c.astype(np.float64)]


def test_cub_end_to_end(cub):
  meta, maps, expected_maps = cub
  out = es.evaluate("CUB", meta, maps, "test", cam_curve_interval=0.01)
  recs = [types.SimpleNamespace(width=w, height=h, boxes=np.array(bs, float))
          for (w, h), bs in BOXES.values()]
  largest, every = sf.box_correct(expected_maps, recs, 0.01, (30, 50, 70))
  assert out["num_images"] == 3
  assert out["MaxBoxAcc"] == largest[1].max() * 100 / 3
  assert out["MaxBoxAccV2"] == np.mean([row.max() * 100 / 3 for row in every])
  for i, d in enumerate((30, 50, 70)):
    assert out[f"curve_BoxAcc@{d}"] == (largest[i] * 100 / 3).tolist()
    assert out[f"curve_BoxAccV2@{d}"] == (every[i] * 100 / 3).tolist()
  assert out["localization"] == out["MaxBoxAcc"] and out["localization_metric"] == "MaxBoxAcc"
  assert out["MaxBoxAcc"] >= 100 / 3  # the square alone is right at every tau
  # The command line prints a short table and writes every number to --output.
  output = os.path.join(os.path.dirname(maps), "out", "metrics.json")
  proc = subprocess.run(
      [sys.executable, "-m", "fcam_jax.evaluate_scoremaps", f"--metadata_root={meta}",
       f"--scoremap_root={maps}", "--dataset=CUB", "--cam_curve_interval=0.01",
       "--box_v2_metric", f"--output={output}"], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) <= 10 and len(proc.stdout) < 1000
  assert lines[0] == f"{maps}: CUB test, 3 images, maps at 224x224, threshold step 0.01"
  assert lines[1] == "| metric         |  value | best tau |"
  assert f"| MaxBoxAcc      | {out['MaxBoxAcc']:6.2f} |    {out['best_tau_MaxBoxAcc']:.3f} |" in lines
  assert f"| MaxBoxAccV2@70 | {out['MaxBoxAccV2@70']:6.2f} |" in proc.stdout
  assert lines[-1] == (f"localization (MaxBoxAccV2): {out['MaxBoxAccV2']:.2f}; full metrics in "
                       f"{output}")
  written = json.load(open(output))
  assert written["localization"] == out["MaxBoxAccV2"] and written["map_size"] == 224
  assert {k: v for k, v in written.items() if k in out and not k.startswith("localization")} == {
      k: v for k, v in out.items() if not k.startswith("localization")}


@pytest.mark.parametrize("content,message", [
    (None, "no score map"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.full((4, 4), 1.5), r"in \[0, 1\]"),
    (-np.ones((4, 4)), r"in \[0, 1\]"),
    (np.zeros((2, 4, 4)), "2-D"),
    (np.array(["a", "b"]), "2-D|dtype"),
])
def test_bad_scoremaps_name_the_image(cub, content, message):
  meta, maps, _ = cub
  path = os.path.join(maps, "d", "c.npy")
  os.remove(path)
  if content is not None:
    np.save(path, content)
  with pytest.raises(es.ScoremapError, match=message) as info:
    es.evaluate("CUB", meta, maps, "test", cam_curve_interval=0.1)
  assert "d/c.jpg" in str(info.value)


def test_openimages_end_to_end(tmp_path):
  meta, masks, maps = (str(tmp_path / d) for d in ("meta", "masks", "maps"))
  _write(os.path.join(meta, "test"), {
      "image_ids.txt": ["t/x.jpg", "t/y.jpg"],
      "class_labels.txt": ["t/x.jpg,0", "t/y.jpg,1"],
      "localization.txt": ["t/x.jpg,t/x_m0.png,t/x_ignore.png", "t/x.jpg,t/x_m1.png,",
                           "t/y.jpg,t/y_m0.png,"],
  })
  rng = np.random.default_rng(3)
  arrays = {"t/x_m0.png": rng.random((8, 8)) > 0.7, "t/x_m1.png": rng.random((8, 8)) > 0.8,
            "t/x_ignore.png": rng.random((8, 8)) > 0.6, "t/y_m0.png": rng.random((8, 8)) > 0.5}
  os.makedirs(os.path.join(masks, "t"))
  for name, a in arrays.items():
    Image.fromarray(a.astype(np.uint8) * 255).save(os.path.join(masks, name))
  os.makedirs(os.path.join(maps, "t"))
  scoremaps = [rng.random((S, S)), rng.random((S, S))]
  for name, m in zip(("x", "y"), scoremaps):
    np.save(os.path.join(maps, "t", name + ".npy"), m)
  out = es.evaluate("OpenImages", meta, maps, "test", mask_root=masks)
  up = lambda a: np.kron(a, np.ones((28, 28), bool))  # 8 -> 224 nearest: 28 x 28 blocks
  fg_x = up(arrays["t/x_m0.png"] | arrays["t/x_m1.png"])
  gt = [(fg_x, up(arrays["t/x_ignore.png"]) & ~fg_x),
        (up(arrays["t/y_m0.png"]), np.zeros((S, S), bool))]
  fg_hist, bg_hist = sf.score_histograms(scoremaps, gt, 0.001)
  assert out["PxAP"] == sf.pxap(fg_hist, bg_hist)
  assert out["localization"] == out["PxAP"] and out["num_images"] == 2
