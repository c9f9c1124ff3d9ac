"""prepare_cub on a miniature CUB_200_2011 release built here."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from fcam_jax.data import prepare_cub
from fcam_jax.data.metadata import read_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (relative path, 1-based class, is_train, x, y, w, h, width, height)
IMAGES = [
    ("001.Alb/Alb_1.jpg", 1, 1, 60.0, 27.0, 25.0, 4.0, 90, 40),
    ("001.Alb/Alb_2.jpg", 1, 1, 0.0, 0.0, 12.0, 10.0, 12, 10),
    ("001.Alb/Alb_3.jpg", 1, 0, 1.0, 2.0, 3.0, 4.0, 10, 10),
    ("001.Alb/Alb_4.jpg", 1, 1, 2.0, 2.0, 5.0, 5.0, 10, 10),
    ("002.Gull/Gull_1.jpg", 2, 1, 3.0, 1.0, 2.0, 6.0, 8, 9),
    ("002.Gull/Gull_2.jpg", 2, 0, 0.0, 0.0, 1.0, 1.0, 9, 8),
    ("002.Gull/Gull_3.jpg", 2, 1, 4.0, 4.0, 4.0, 4.0, 8, 8),
    ("002.Gull/Gull_4.jpg", 2, 1, 1.0, 1.0, 1.0, 1.0, 8, 8),
]


def make_release(root, rows=IMAGES):
  os.makedirs(root, exist_ok=True)
  files = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [],
           "bounding_boxes.txt": []}
  for k, (rel, label, train, x, y, w, h, width, height) in enumerate(rows, 1):
    files["images.txt"].append(f"{k} {rel}")
    files["image_class_labels.txt"].append(f"{k} {label}")
    files["train_test_split.txt"].append(f"{k} {train}")
    files["bounding_boxes.txt"].append(f"{k} {x} {y} {w} {h}")
    path = os.path.join(root, "images", rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
  for name, lines in files.items():
    with open(os.path.join(root, name), "w") as f:
      f.write("".join(line + "\n" for line in lines))


def test_convert_without_val_metadata_holds_out_train_images(tmp_path):
  root, out = str(tmp_path / "CUB_200_2011"), str(tmp_path / "meta")
  make_release(root)
  counts = prepare_cub.convert(root, out, val_per_class=1, seed=0)
  assert counts == {"train": 4, "val": 2, "test": 2}
  data = os.path.join(root, "images")
  splits = {s: read_split("CUB", out, s, data, num_classes=2) for s in ("train", "val", "test")}
  by_id = {row[0]: row for row in IMAGES}
  for split, recs in splits.items():
    for r in recs:
      rel, label, train, x, y, w, h, width, height = by_id[r.image_id]
      assert r.label == label - 1
      assert (r.width, r.height) == (width, height)
      np.testing.assert_array_equal(r.boxes, [[x, y, x + w, y + h]])
      assert bool(train) == (split != "test")
  assert [r.image_id for r in splits["test"]] == ["001.Alb/Alb_3.jpg", "002.Gull/Gull_2.jpg"]
  val = {r.image_id for r in splits["val"]}
  train = {r.image_id for r in splits["train"]}
  assert not val & train and sorted(r.label for r in splits["val"]) == [0, 1]
  # The first image's line is written as the benchmark writes it.
  with open(os.path.join(out, "test", "localization.txt")) as f:
    assert f.readline() == "001.Alb/Alb_3.jpg,1,2,4,6\n"
  # Seeded: same draw again, another with another seed (over a few seeds).
  prepare_cub.convert(root, str(tmp_path / "again"), val_per_class=1, seed=0)
  assert {r.image_id for r in read_split("CUB", str(tmp_path / "again"), "val", data)} == val
  draws = set()
  for seed in range(6):
    prepare_cub.convert(root, str(tmp_path / f"s{seed}"), val_per_class=1, seed=seed)
    draws.add(frozenset(r.image_id for r in read_split("CUB", str(tmp_path / f"s{seed}"), "val",
                                                       data)))
  assert len(draws) > 1


def test_convert_with_val_metadata_copies_it_and_keeps_all_train(tmp_path):
  root, out = str(tmp_path / "CUB_200_2011"), str(tmp_path / "meta")
  make_release(root)
  val_dir = tmp_path / "wsol" / "val"
  val_dir.mkdir(parents=True)
  (val_dir / "image_ids.txt").write_text("001.Alb/v1.jpg\n")
  (val_dir / "class_labels.txt").write_text("001.Alb/v1.jpg,0\n")
  (val_dir / "image_sizes.txt").write_text("001.Alb/v1.jpg,30,20\n")
  (val_dir / "localization.txt").write_text("001.Alb/v1.jpg,1,1,5,5\n")
  counts = prepare_cub.convert(root, out, val_metadata=str(tmp_path / "wsol"))
  assert counts == {"train": 6, "val": 1, "test": 2}
  for name in ("image_ids.txt", "localization.txt"):
    assert (tmp_path / "meta" / "val" / name).read_text() == (val_dir / name).read_text()


def test_command_line(tmp_path):
  root, out = str(tmp_path / "CUB_200_2011"), str(tmp_path / "meta")
  make_release(root)
  proc = subprocess.run(
      [sys.executable, "-m", "fcam_jax.data.prepare_cub", f"--cub_root={root}", f"--out={out}",
       "--val_per_class=0"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "train: 6 images" in proc.stdout and not os.path.exists(os.path.join(out, "val"))
  assert len(read_split("CUB", out, "train", os.path.join(root, "images"))) == 6


@pytest.mark.parametrize("name,line,message", [
    ("bounding_boxes.txt", "3 1.0 2.0 3.0", "bounding_boxes.txt:3: malformed"),
    ("bounding_boxes.txt", "3 1.0 2.0 3.0 nan", "bounding_boxes.txt:3: bad box"),
    ("bounding_boxes.txt", "3 8.0 2.0 3.0 4.0", "bounding_boxes.txt:3: .* outside the 10x10"),
    ("image_class_labels.txt", "3 zero", "image_class_labels.txt:3: malformed"),
    ("image_class_labels.txt", "3 0", "image_class_labels.txt:3: class 0"),
    ("train_test_split.txt", "3 2", "train_test_split.txt:3: is_training_image"),
    ("images.txt", "3 001.Alb/missing.jpg", "images.txt:3: .*no such image file"),
])
def test_malformed_release_names_file_and_line(tmp_path, name, line, message):
  root = str(tmp_path / "CUB_200_2011")
  make_release(root)
  path = os.path.join(root, name)
  lines = open(path).read().splitlines()
  lines[2] = line
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(prepare_cub.CubError, match=message):
    prepare_cub.convert(root, str(tmp_path / "meta"), val_per_class=1)


def test_missing_ids_and_too_few_train_images(tmp_path):
  root = str(tmp_path / "CUB_200_2011")
  make_release(root)
  path = os.path.join(root, "bounding_boxes.txt")
  lines = open(path).read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(lines[:-1]) + "\n")
  with pytest.raises(prepare_cub.CubError, match="images.txt:8: image id 8 .* missing from"):
    prepare_cub.convert(root, str(tmp_path / "meta"))
  make_release(root)
  with pytest.raises(prepare_cub.CubError, match="cannot hold out 3"):
    prepare_cub.convert(root, str(tmp_path / "meta"), val_per_class=3)
