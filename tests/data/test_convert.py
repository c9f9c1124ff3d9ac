"""fcam_jax.data.convert on miniature CSV, COCO and VOC inputs built here.

Every converted split is read back with metadata.read_split (labels, boxes in original
pixels, mask pixels), the masks compared with ones rendered independently (RLE written
by hand, polygons by a brute-force point-in-polygon test); the listing of the images left
out, the class index across splits, and the one-line errors with their file:line and
exit codes.
"""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from fcam_jax.data import convert
from fcam_jax.data.converters import rle
from fcam_jax.data.metadata import read_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _image(path, w, h):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(w * 1000 + h)
  Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return str(path)


def _main(capsys, *argv):
  """convert.main in-process: (exit code, stdout, stderr)."""
  try:
    rc = convert.main([str(a) for a in argv])
  except SystemExit as e:  # usage errors
    rc = e.code
  out, err = capsys.readouterr()
  return rc, out, err


def _error(capsys, *argv, rc=1):
  """The one stderr line of a failing run (checked to be one line and `error: `)."""
  code, out, err = _main(capsys, *argv)
  assert code == rc, (code, out, err)
  assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
  return err[len("error: "):].rstrip("\n")


def _run(*argv):
  """The command in a subprocess, as a user runs it."""
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "fcam_jax.data.convert", *map(str, argv)],
                        capture_output=True, text=True, env=env, timeout=120)


def _inside(poly, x, y):
  """Brute-force even-odd ray casting: is (x, y) inside the polygon?"""
  pts = np.asarray(poly, float).reshape(-1, 2)
  inside = False
  for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0)):
    if (ya <= y) != (yb <= y) and x < xa + (y - ya) * (xb - xa) / (yb - ya):
      inside = not inside
  return inside


def _brute_polygon(poly, h, w):
  return np.array([[_inside(poly, i + 0.5, j + 0.5) for i in range(w)] for j in range(h)])


def _png(path):
  return np.asarray(Image.open(path).convert("L")) > 0


# --------------------------------------------------------------------------- RLE, polygons


def test_rle_uncompressed_counts_by_hand():
  mask = np.array([[0, 1, 1, 0],
                   [0, 1, 0, 0],
                   [1, 1, 0, 0]], bool)
  # Column-major: 0 0 1 | 1 1 1 | 1 0 0 | 0 0 0 -> runs of 2 zeros, 5 ones, 5 zeros.
  np.testing.assert_array_equal(rle.decode({"counts": [2, 5, 5], "size": [3, 4]}, 3, 4), mask)
  assert rle.mask_to_counts(mask) == [2, 5, 5]
  # A mask starting with a 1 starts with an empty run of zeros.
  assert rle.mask_to_counts(~mask) == [0, 2, 5, 5]
  with pytest.raises(ValueError, match="sum to 11"):
    rle.decode({"counts": [2, 5, 4]}, 3, 4)


def test_rle_compressed_string_by_hand():
  # "234N2": runs 2, 3, 4, then 'N' = 30 -> -2 (sign bit) + run[1] = 1, then '2' + run[2] = 6.
  assert rle.string_to_counts("234N2") == [2, 3, 4, 1, 6]
  expected = np.array([[0, 1, 0, 0],
                       [0, 0, 1, 0],
                       [1, 0, 0, 0],
                       [1, 0, 0, 0]], bool)
  np.testing.assert_array_equal(rle.decode({"counts": "234N2", "size": [4, 4]}, 4, 4), expected)
  # Runs over 31 take two characters: 'X' = 8 | more, '1' = 1 << 5 -> 40; 'h0' = 24.
  assert rle.string_to_counts("0X1h0") == [0, 40, 24]
  expected = np.zeros((8, 8), bool)
  expected[:, :5] = True
  np.testing.assert_array_equal(rle.decode({"counts": "0X1h0"}, 8, 8), expected)
  assert rle.counts_to_string([2, 3, 4, 1, 6]) == "234N2"
  assert rle.counts_to_string([0, 40, 24]) == "0X1h0"
  with pytest.raises(ValueError, match="ends inside a run"):
    rle.string_to_counts("X")


def test_rle_round_trip_random_masks():
  rng = np.random.default_rng(0)
  for t in range(100):
    h, w = rng.integers(1, 50, 2)
    mask = rng.random((h, w)) < rng.random()
    if t % 4 == 0:  # long runs
      mask = np.zeros((h, w), bool)
      mask[rng.integers(0, h):, rng.integers(0, w):] = True
    text = rle.counts_to_string(rle.mask_to_counts(mask))
    np.testing.assert_array_equal(rle.decode({"counts": text}, h, w), mask)


def test_polygons_are_sampled_at_pixel_centres():
  rect = rle.polygons([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)  # pixels x 1..3, y 1..2
  expected = np.zeros((5, 6), bool)
  expected[1:3, 1:4] = True
  np.testing.assert_array_equal(rect, expected)
  # Centre 0.5 is left of 0.6 (out), 3.5 on the right edge (out): x in {1, 2}; y 0..2.
  frac = rle.polygons([[0.6, 0.4, 3.5, 0.4, 3.5, 2.6, 0.6, 2.6]], 4, 5)
  expected = np.zeros((4, 5), bool)
  expected[0:3, 1:3] = True
  np.testing.assert_array_equal(frac, expected)
  # A concave polygon and a triangle reaching past the image, against brute force.
  for poly, (h, w) in [([0.3, 0.2, 9.7, 1.1, 5.2, 4.4, 9.1, 8.6, 0.8, 7.3], (10, 11)),
                       ([-3.1, 2.2, 14.6, 0.7, 6.3, 12.9], (9, 12))]:
    np.testing.assert_array_equal(rle.polygons([poly], h, w), _brute_polygon(poly, h, w))
  # Two polygons of one annotation are united; fewer than 3 points cover nothing.
  both = rle.polygons([[0, 0, 2, 0, 2, 2, 0, 2], [3, 3, 5, 3, 5, 5, 3, 5], [1, 1, 2, 2]], 6, 6)
  assert both.sum() == 8 and both[0, 0] and both[4, 4] and not both[2, 2]


# --------------------------------------------------------------------------- CSV

CSV_SIZES = {"birds/a.jpg": (40, 30), "birds/b.png": (20, 10), "birds/c.jpg": (16, 16),
             "birds/d.jpg": (24, 18), "birds/e.png": (12, 12)}


@pytest.fixture
def csv_data(tmp_path):
  images = tmp_path / "images"
  for rel, (w, h) in CSV_SIZES.items():
    _image(str(images / rel), w, h)
  return tmp_path, str(images), str(tmp_path / "meta")


TRAIN_CSV = """image,label,x0,y0,x1,y1,note
birds/a.jpg,gull,1,2,39,30,two boxes
birds/a.jpg,gull,0,0,5,5,
birds/b.png,albatross,0,0,20,10,
"""
VAL_CSV = """image,label,x0,y0,x1,y1
birds/d.jpg,gull,3.5,4,8,9.25
birds/e.png,albatross,0,0,12,12
"""


def test_csv_train_and_val_read_back(csv_data, capsys):
  tmp, images, out = csv_data
  train = _text(tmp / "train.csv", TRAIN_CSV)
  rc, stdout, err = _main(capsys, "csv", f"--csv={train}", f"--images={images}", f"--out={out}",
                          "--split=train")
  assert rc == 0 and err == ""
  assert stdout == (f"train: 2 images, 3 boxes, 2 classes (class_names.txt: 2, 2 new), 0 left "
                    f"out (listed in {out}/train_left_out.json) -> {out}/train\n")
  with open(os.path.join(out, "class_names.txt")) as f:
    assert f.read() == "albatross\ngull\n"  # new names in sorted order: line k = label k
  recs = read_split("CUB", out, "train", images, num_classes=2)
  assert [(r.image_id, r.label, r.width, r.height) for r in recs] == [
      ("birds/a.jpg", 1, 40, 30), ("birds/b.png", 0, 20, 10)]
  np.testing.assert_array_equal(recs[0].boxes, [[1, 2, 39, 30], [0, 0, 5, 5]])
  np.testing.assert_array_equal(recs[1].boxes, [[0, 0, 20, 10]])

  val = _text(tmp / "val.csv", VAL_CSV)
  rc, stdout, _ = _main(capsys, "csv", f"--csv={val}", f"--images={images}", f"--out={out}",
                        "--split=val")
  assert rc == 0 and stdout.startswith("val: 2 images, 2 boxes, 2 classes (class_names.txt: 2)")
  recs = read_split("CUB", out, "val", images, num_classes=2)
  assert [(r.image_id, r.label) for r in recs] == [("birds/d.jpg", 1), ("birds/e.png", 0)]
  np.testing.assert_array_equal(recs[0].boxes, [[3.5, 4, 8, 9.25]])  # fractions kept
  with open(os.path.join(out, "val", "localization.txt")) as f:
    assert f.read() == "birds/d.jpg,3.5,4,8,9.25\nbirds/e.png,0,0,12,12\n"
  with open(os.path.join(out, "val_left_out.json")) as f:
    assert json.load(f) == {"split": "val", "num_images": 0, "images": []}
  assert sorted(os.listdir(out)) == ["class_names.txt", "train", "train_left_out.json", "val",
                                     "val_left_out.json"]  # no staging folder left


def test_csv_class_index_is_shared_and_only_train_extends_it(csv_data, capsys):
  tmp, images, out = csv_data
  train = _text(tmp / "train.csv", TRAIN_CSV)
  args = [f"--images={images}", f"--out={out}"]
  assert _main(capsys, "csv", f"--csv={train}", *args, "--split=train")[0] == 0
  # A val with a class train never had: the CSV line, and the class file, named.
  val = _text(tmp / "val.csv", VAL_CSV + "birds/c.jpg,heron,1,1,4,4\n")
  message = _error(capsys, "csv", f"--csv={val}", *args, "--split=test")
  assert message == (f"{val}:4: class 'heron' is not in {out}/class_names.txt; only the train "
                     "split adds classes (convert train first)")
  assert not os.path.exists(os.path.join(out, "test"))
  # Train again with a new class: appended, the old labels unchanged.
  train2 = _text(tmp / "train2.csv", "image,label,x,y,w,h\nbirds/c.jpg,heron,1,1,3,3\n"
                 "birds/b.png,albatross,0,0,20,10\nbirds/a.jpg,gull,0,0,40,30\n")
  rc, stdout, _ = _main(capsys, "csv", f"--csv={train2}", *args, "--split=train",
                        "--box_format=xywh")
  assert rc == 0 and "(class_names.txt: 3, 1 new)" in stdout
  with open(os.path.join(out, "class_names.txt")) as f:
    assert f.read() == "albatross\ngull\nheron\n"
  recs = read_split("CUB", out, "train", images)
  assert [(r.image_id, r.label) for r in recs] == [
      ("birds/c.jpg", 2), ("birds/b.png", 0), ("birds/a.jpg", 1)]
  np.testing.assert_array_equal(recs[0].boxes, [[1, 1, 4, 4]])  # x, y, w, h -> x0, y0, x1, y1
  assert _main(capsys, "csv", f"--csv={val}", *args, "--split=val")[0] == 0
  assert [r.label for r in read_split("CUB", out, "val", images)] == [1, 0, 2]
  # Val before any train: no class index to take labels from.
  message = _error(capsys, "csv", f"--csv={val}", f"--images={images}",
                   f"--out={tmp / 'fresh'}", "--split=val")
  assert "class 'gull' is unknown" in message and "does not exist" in message


def test_csv_images_without_box_only_in_train(csv_data, capsys):
  tmp, images, out = csv_data
  train = _text(tmp / "train.csv", TRAIN_CSV + "birds/c.jpg,tern,,,,,\n")
  rc, stdout, _ = _main(capsys, "csv", f"--csv={train}", f"--images={images}", f"--out={out}",
                        "--split=train")
  assert rc == 0
  assert ("3 images, no localization.txt (1 of 3 images have no box; the train split needs "
          "none), 3 classes") in stdout
  assert not os.path.exists(os.path.join(out, "train", "localization.txt"))
  recs = read_split("CUB", out, "train", images, num_classes=3)
  assert [r.label for r in recs] == [1, 0, 2] and all(len(r.boxes) == 0 for r in recs)
  # --labels_only: no localization.txt even where every image has a box.
  train = _text(tmp / "train.csv", TRAIN_CSV)
  rc, stdout, _ = _main(capsys, "csv", f"--csv={train}", f"--images={images}", f"--out={out}",
                        "--split=train", "--labels_only")
  assert rc == 0 and "no localization.txt (--labels_only)" in stdout
  val = _text(tmp / "val.csv", VAL_CSV + "birds/c.jpg,gull,,,,\n")
  message = _error(capsys, "csv", f"--csv={val}", f"--images={images}", f"--out={out}",
                   "--split=val")
  assert message.startswith(f"{val}:4: no box for 'birds/c.jpg'; only the train split")
  message = _error(capsys, "csv", f"--csv={val}", f"--images={images}", f"--out={out}",
                   "--split=val", "--labels_only", rc=2)
  assert message.startswith("--labels_only with --split=val: val and test need localization")


@pytest.mark.parametrize("rows, expected", [
    ("birds/a.jpg,gull,1,2,39\n", "{csv}:3: 5 fields; the header has 6 (image,label,x0,y0,x1,y1)"),
    ("birds/a.jpg,gull,0,0,41,30\n",
     "{csv}:3: box 0,0,41,30 is outside the 40x30 image (boxes are not clipped) of 'birds/a.jpg'"),
    ("birds/a.jpg,gull,5,0,5,30\n",
     "{csv}:3: box 5,0,5,30 is empty (needs x1 > x0 and y1 > y0) of 'birds/a.jpg'"),
    ("birds/zz.jpg,gull,0,0,1,1\n", "{csv}:3: {images}/birds/zz.jpg: no such image file"),
    ("birds/a.jpg,gull,0,0,one,1\n", "{csv}:3: box field 'one' is not a number"),
    ("birds/a.jpg,gull,0,0,,1\n", "{csv}:3: box field(s) x1 empty; leave all four empty for an "
     "image without a box (train only), or none"),
    ("birds/a.jpg,tern,0,0,1,1\n",
     "{csv}:3: image 'birds/a.jpg' is labelled 'tern' here and 'gull' on {csv}:2 (one class "
     "per image)"),
    ("../a.jpg,gull,0,0,1,1\n", "{csv}:3: image {tmp}/a.jpg is outside --data_root={images}"),
    ('birds/a.jpg,"gull,0,0,1,1\n',
     "{csv}:3: 2 fields; the header has 6 (image,label,x0,y0,x1,y1)"),
], ids=["field_count", "outside", "empty_box", "missing_image", "not_a_number", "partial_box",
        "two_labels", "escapes_data_root", "open_quote"])
def test_csv_errors_name_the_line(csv_data, capsys, rows, expected):
  tmp, images, out = csv_data
  path = _text(tmp / "bad.csv", "image,label,x0,y0,x1,y1\nbirds/a.jpg,gull,1,2,39,30\n" + rows)
  message = _error(capsys, "csv", f"--csv={path}", f"--images={images}", f"--out={out}",
                   "--split=train")
  assert message == expected.format(csv=path, images=images, tmp=tmp)
  assert not os.path.exists(out) or os.listdir(out) == []  # nothing written


def test_csv_header_must_name_the_columns(csv_data, capsys):
  tmp, images, out = csv_data
  path = _text(tmp / "bad.csv", "file,label,x0,y0,x1,y1\n")
  message = _error(capsys, "csv", f"--csv={path}", f"--images={images}", f"--out={out}",
                   "--split=train")
  assert message == (f"{path}:1: the header 'file,label,x0,y0,x1,y1' lacks image; expected "
                     "image,label,x0,y0,x1,y1 (--box_format=xyxy; other columns are ignored)")


def test_failed_run_keeps_the_previous_split(csv_data, capsys):
  tmp, images, out = csv_data
  args = [f"--images={images}", f"--out={out}"]
  assert _main(capsys, "csv", f"--csv={_text(tmp / 't.csv', TRAIN_CSV)}", *args,
               "--split=train")[0] == 0
  assert _main(capsys, "csv", f"--csv={_text(tmp / 'v.csv', VAL_CSV)}", *args,
               "--split=val")[0] == 0
  before = {n: open(os.path.join(out, "val", n)).read() for n in os.listdir(f"{out}/val")}
  bad = _text(tmp / "bad.csv", VAL_CSV + "birds/e.png,albatross,0,0,13,12\n")
  assert "outside the 12x12 image" in _error(capsys, "csv", f"--csv={bad}", *args, "--split=val")
  after = {n: open(os.path.join(out, "val", n)).read() for n in os.listdir(f"{out}/val")}
  assert after == before and not [n for n in os.listdir(out) if n.startswith(".")]


def test_command_exit_codes_and_one_line_errors(csv_data):
  tmp, images, out = csv_data
  bad = _text(tmp / "bad.csv", "image,label,x0,y0,x1,y1\nbirds/a.jpg,gull,1,2\n")
  r = _run("csv", f"--csv={bad}", f"--images={images}", f"--out={out}", "--split=train")
  assert r.returncode == 1 and r.stdout == ""
  assert r.stderr == f"error: {bad}:2: 4 fields; the header has 6 (image,label,x0,y0,x1,y1)\n"
  r = _run("csv", f"--csv={bad}", f"--images={images}", f"--out={out}", "--split=train",
           "--verbose")
  assert r.returncode == 1 and "Traceback" in r.stderr
  assert r.stderr.splitlines()[-1].startswith("error: ")
  # Usage errors: exit code 2, one line.
  r = _run("csv", f"--csv={bad}", f"--images={images}", f"--out={out}", "--split=dev")
  assert r.returncode == 2 and r.stderr.count("\n") == 1
  assert r.stderr.startswith("error: argument --split: invalid choice: 'dev'")
  r = _run("csv", f"--csv={tmp}/none.csv", f"--images={images}", f"--out={out}", "--split=val")
  assert r.returncode == 2 and f"--csv={tmp}/none.csv: no such file" in r.stderr
  r = _run("--help")
  assert r.returncode == 0 and "{csv,coco,voc}" in r.stdout and "class_names.txt" in r.stdout


# --------------------------------------------------------------------------- COCO

# Image 1 (12x10): cat = a polygon + a compressed RLE (hand-written "n05e2": runs 30, 5, 85:
# column 3, rows 0-4) + a crowd (uncompressed runs 100, 10, 10: column 10) -> label cat.
# Image 2 (8x6): dog (uncompressed runs 6, 12, 30: columns 1-2) + a tiny cat -> dog.
# Image 3: no annotation. Image 4: dog 20 px^2, cat 16 px^2 (>= 0.5 of it): ambiguous.
# Image 5 (10x8): only a crowd of persons.
TRIANGLE = [0.4, 0.6, 6.2, 1.3, 2.1, 8.7]
COCO = {
    "images": [
        {"id": 1, "file_name": "000001.jpg", "width": 12, "height": 10},
        {"id": 2, "file_name": "000002.png", "width": 8, "height": 6},
        {"id": 3, "file_name": "000003.jpg", "width": 10, "height": 10},
        {"id": 4, "file_name": "000004.jpg", "width": 10, "height": 10},
        {"id": 5, "file_name": "000005.jpg", "width": 10, "height": 8},
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"},
                   {"id": 3, "name": "person"}],
    "annotations": [
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 24.0,
         "bbox": [0.4, 0.6, 5.8, 8.1], "segmentation": [TRIANGLE]},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 5,
         "bbox": [3, 0, 1, 5], "segmentation": {"counts": "n05e2", "size": [10, 12]}},
        {"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 10,
         "bbox": [10, 0, 1, 10], "segmentation": {"counts": [100, 10, 10], "size": [10, 12]}},
        {"id": 21, "image_id": 2, "category_id": 2, "iscrowd": 0,
         "bbox": [1, 0, 2, 6], "segmentation": {"counts": [6, 12, 30], "size": [6, 8]}},
        {"id": 22, "image_id": 2, "category_id": 1, "iscrowd": 0,
         "bbox": [5.2, 4.0, 0.5, 1.0], "segmentation": [[5.2, 4, 5.7, 4, 5.7, 5]]},
        {"id": 41, "image_id": 4, "category_id": 2, "bbox": [0, 0, 5, 4],
         "segmentation": [[0, 0, 5, 0, 5, 4, 0, 4]]},
        {"id": 42, "image_id": 4, "category_id": 1, "bbox": [5, 5, 4, 4],
         "segmentation": [[5, 5, 9, 5, 9, 9, 5, 9]]},
        {"id": 51, "image_id": 5, "category_id": 3, "iscrowd": 1, "bbox": [2, 2, 3, 3],
         "segmentation": {"counts": [22, 3, 5, 3, 5, 3, 39], "size": [8, 10]}},
    ],
}


@pytest.fixture
def coco_data(tmp_path):
  images = tmp_path / "coco" / "val2017"
  for img in COCO["images"]:
    _image(str(images / img["file_name"]), img["width"], img["height"])
  ann = _text(tmp_path / "coco" / "annotations" / "instances_val2017.json", json.dumps(COCO))
  return tmp_path, str(images), ann


def test_coco_boxes_label_rule_and_left_out_listing(coco_data, capsys):
  tmp, images, ann = coco_data
  out, root = str(tmp / "meta"), str(tmp / "coco")
  rc, stdout, err = _main(capsys, "coco", f"--annotations={ann}", f"--images={images}",
                          f"--data_root={root}", f"--out={out}", "--split=train")
  assert rc == 0 and err == ""
  assert stdout == (f"train: 3 images, 5 boxes, 3 classes (class_names.txt: 3, 3 new), 2 left out "
                    f"(1 ambiguous, 1 no annotation; listed in {out}/train_left_out.json) -> "
                    f"{out}/train\n")
  recs = read_split("CUB", out, "train", root, num_classes=3)
  # Ids are relative to --data_root; labels index class_names.txt (cat, dog, person).
  assert [(r.image_id, r.label) for r in recs] == [
      ("val2017/000001.jpg", 0), ("val2017/000002.png", 1), ("val2017/000005.jpg", 2)]
  # bbox x, y, w, h rounded outwards: 0.4, 0.6, 6.2, 8.7 -> 0, 0, 7, 9; the crowd is a box too.
  np.testing.assert_array_equal(recs[0].boxes, [[0, 0, 7, 9], [3, 0, 4, 5], [10, 0, 11, 10]])
  np.testing.assert_array_equal(recs[1].boxes, [[1, 0, 3, 6]])  # the small cat is not dog's
  np.testing.assert_array_equal(recs[2].boxes, [[2, 2, 5, 5]])
  with open(os.path.join(out, "train_left_out.json")) as f:
    listing = json.load(f)
  assert listing["num_images"] == 2
  assert [(x["image"], x["where"], x["kind"]) for x in listing["images"]] == [
      ("val2017/000003.jpg", f"{ann}: image id 3", "no annotation"),
      ("val2017/000004.jpg", f"{ann}: image id 4", "ambiguous")]
  assert listing["images"][1]["reason"] == ("ambiguous label: 'dog' covers 20 px^2, 'cat' 16 px^2 "
                                            "(at least 0.5 of it)")
  # A stricter rule (only ties are ambiguous) keeps image 4, as dog.
  rc, stdout, _ = _main(capsys, "coco", f"--annotations={ann}", f"--images={images}",
                        f"--data_root={root}", f"--out={out}", "--split=train",
                        "--ambiguous_ratio=1")
  assert rc == 0 and stdout.startswith("train: 4 images")


def test_coco_masks_from_polygons_and_rle(coco_data, capsys):
  tmp, images, ann = coco_data
  out, masks = str(tmp / "meta"), str(tmp / "masks")
  assert _main(capsys, "coco", f"--annotations={ann}", f"--images={images}", f"--out={out}",
               "--split=train")[0] == 0  # the classes: cat, dog, person
  # A mask split beside a box split: refused (the trainer reads one kind).
  message = _error(capsys, "coco", f"--annotations={ann}", f"--images={images}", f"--out={out}",
                   f"--masks={masks}", "--split=val")
  assert message.startswith(f"{out}/train/localization.txt holds boxes; this val split would "
                            "hold masks: a dataset has boxes or masks, not both")
  assert _main(capsys, "coco", f"--annotations={ann}", f"--images={images}", f"--out={out}",
               "--split=train", "--labels_only")[0] == 0
  rc, stdout, _ = _main(capsys, "coco", f"--annotations={ann}", f"--images={images}",
                        f"--out={out}", f"--masks={masks}", "--split=val",
                        "--ambiguous_ratio=1")
  assert rc == 0
  assert stdout.startswith("val: 3 images, 4 masks (1 ignore mask), 2 classes (class_names.txt:"
                           " 3), 2 left out (1 no annotation, 1 only crowd; listed in")
  recs = read_split("OpenImages", out, "val", images, mask_root=masks, num_classes=2)
  assert [(r.image_id, r.label) for r in recs] == [
      ("000001.jpg", 0), ("000002.png", 1), ("000004.jpg", 1)]
  r1, r2, r4 = recs
  assert [os.path.relpath(p, masks) for p in r1.mask_paths] == [
      "val/000001_11.png", "val/000001_12.png"]
  assert os.path.relpath(r1.ignore_path, masks) == "val/000001_ignore.png"
  np.testing.assert_array_equal(_png(r1.mask_paths[0]), _brute_polygon(TRIANGLE, 10, 12))
  column3 = np.zeros((10, 12), bool)
  column3[0:5, 3] = True  # "n05e2", by hand
  np.testing.assert_array_equal(_png(r1.mask_paths[1]), column3)
  column10 = np.zeros((10, 12), bool)
  column10[:, 10] = True  # crowd runs 100, 10, 10 -> the ignore mask
  np.testing.assert_array_equal(_png(r1.ignore_path), column10)
  columns12 = np.zeros((6, 8), bool)
  columns12[:, 1:3] = True
  np.testing.assert_array_equal(_png(r2.mask_paths[0]), columns12)
  assert r2.ignore_path == "" and r2.boxes.shape == (0, 4)
  square = np.zeros((10, 10), bool)
  square[0:4, 0:5] = True
  np.testing.assert_array_equal(_png(r4.mask_paths[0]), square)
  with open(os.path.join(out, "val", "localization.txt")) as f:
    assert f.read().splitlines() == [
        "000001.jpg,val/000001_11.png,val/000001_ignore.png", "000001.jpg,val/000001_12.png,",
        "000002.png,val/000002_21.png,", "000004.jpg,val/000004_41.png,"]
  with open(os.path.join(out, "val_left_out.json")) as f:
    reasons = {x["image"]: x["reason"] for x in json.load(f)["images"]}
  assert reasons == {"000003.jpg": "no annotation", "000005.jpg":
                     "only crowd annotations (iscrowd=1) of 'person': no instance mask"}
  # A second run replaces the masks folder of the split (no stale file).
  _text(os.path.join(masks, "val", "stale.png"), "x")
  assert _main(capsys, "coco", f"--annotations={ann}", f"--images={images}", f"--out={out}",
               f"--masks={masks}", "--split=val")[0] == 0
  assert "stale.png" not in os.listdir(os.path.join(masks, "val"))
  assert sorted(os.listdir(masks)) == ["val"]


def _coco_error(coco_data, capsys, edit, masks=False):
  tmp, images, _ = coco_data
  data = json.loads(json.dumps(COCO))
  edit(data)
  ann = _text(tmp / "edited.json", json.dumps(data))
  extra = [f"--masks={tmp / 'masks'}"] if masks else []
  return ann, _error(capsys, "coco", f"--annotations={ann}", f"--images={images}",
                     f"--out={tmp / 'meta'}", "--split=val", *extra)


def test_coco_errors_name_the_json_ids(coco_data, capsys):
  tmp, images, _ = coco_data

  def outside(d):
    d["annotations"][3]["bbox"] = [1, 0, 2, 6.5]
  ann, message = _coco_error(coco_data, capsys, outside)
  assert message == (f"{ann}: annotation id 21 (image id 2): bbox [1, 0, 2, 6.5] -> box 1,0,3,7 "
                     "is outside the 8x6 image (boxes are not clipped)")

  def unknown_image(d):
    d["annotations"][0]["image_id"] = 99
  ann, message = _coco_error(coco_data, capsys, unknown_image)
  assert message == f"{ann}: annotation id 11: image_id 99 is not in the images list"

  def missing_file(d):
    d["images"][1]["file_name"] = "gone.jpg"
  ann, message = _coco_error(coco_data, capsys, missing_file)
  assert message == f"{ann}: image id 2: {images}/gone.jpg: no such image file"

  def wrong_size(d):
    d["images"][0]["width"] = 13
  ann, message = _coco_error(coco_data, capsys, wrong_size)
  assert message == f"{ann}: image id 1: {images}/000001.jpg is 12x10; the JSON says 13x10"

  def bad_rle(d):
    d["annotations"][1]["segmentation"]["counts"] = "n05e3"
  ann, message = _coco_error(coco_data, capsys, bad_rle, masks=True)
  assert message == (f"{ann}: annotation id 12 (image id 1): bad RLE (RLE counts sum to 152, "
                     "not 10x12 = 120 pixels)")

  def same_file(d):
    d["images"][2]["file_name"] = "./000001.jpg"
  ann, message = _coco_error(coco_data, capsys, same_file)
  assert message == f"{ann}: image id 3: file_name './000001.jpg' is the file of image id 1 too"

  def repeated_annotation(d):
    d["annotations"][4]["id"] = 12
  ann, message = _coco_error(coco_data, capsys, repeated_annotation)
  assert message == f"{ann}: annotation id 12: repeated annotation id"

  def no_segmentation(d):
    del d["annotations"][0]["segmentation"]
  ann, message = _coco_error(coco_data, capsys, no_segmentation, masks=True)
  assert message.startswith(f"{ann}: annotation id 11 (image id 1): no segmentation")


def test_coco_bad_json_in_a_subprocess(coco_data):
  tmp, images, _ = coco_data
  bad = _text(tmp / "bad.json", '{"images": [\n  {"id": 1,\n   "file_name": }\n]}\n')
  r = _run("coco", f"--annotations={bad}", f"--images={images}", f"--out={tmp / 'meta'}",
           "--split=val")
  assert r.returncode == 1 and r.stdout == ""
  assert r.stderr == f"error: {bad}:3:17: invalid JSON (Expecting value)\n"


# --------------------------------------------------------------------------- VOC


def _voc_xml(filename, objects, size=None):
  parts = ["<annotation>", "  <folder>VOC2012</folder>"]
  if filename:
    parts.append(f"  <filename>{filename}</filename>")
  if size:
    parts.append(f"  <size><width>{size[0]}</width><height>{size[1]}</height>"
                 "<depth>3</depth></size>")
  for name, box, difficult in objects:
    parts += ["  <object>", f"    <name>{name}</name>", "    <truncated>0</truncated>",
              f"    <difficult>{difficult}</difficult>", "    <bndbox>",
              *(f"      <{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box)),
              "    </bndbox>", "    <part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
              "<xmax>2</xmax><ymax>2</ymax></bndbox></part>", "  </object>"]
  return "\n".join(parts + ["</annotation>", ""])


VOC = {  # stem: (image file, (w, h), objects, <filename> written)
    "v1": ("v1.jpg", (20, 16), [("dog", (1, 1, 20, 16), 0), ("dog", (5, 5, 10, 10), 1)], True),
    "v2": ("v2.png", (12, 10), [("cat", (2, 3, 8, 9), 0), ("person", (1, 1, 2, 2), 0)], False),
    "v3": ("v3.jpg", (8, 8), [], True),
    "v4": ("v4.jpg", (10, 10), [("dog", (1, 1, 10, 10), 0), ("cat", (1, 1, 9, 10), 0)], True),
    "v5": ("v5.jpg", (10, 10), [("cat", (2.5, 3, 7.2, 8), 1)], True),
}


@pytest.fixture
def voc_data(tmp_path):
  root = tmp_path / "VOC2012"
  for stem, (name, size, objects, named) in VOC.items():
    _image(str(root / "JPEGImages" / name), *size)
    _text(root / "Annotations" / f"{stem}.xml",
          _voc_xml(name if named else None, objects, size))
  return tmp_path, str(root / "Annotations"), str(root / "JPEGImages")


def test_voc_boxes_convention_difficult_and_left_out(voc_data, capsys):
  tmp, anns, images = voc_data
  out = str(tmp / "meta")
  rc, stdout, _ = _main(capsys, "voc", f"--annotations={anns}", f"--images={images}",
                        f"--out={out}", "--split=train")
  assert rc == 0
  assert stdout.startswith("train: 3 images, 4 boxes, 2 classes (class_names.txt: 2, 2 new), 2 "
                           "left out (1 ambiguous, 1 no object; listed in")
  recs = read_split("CUB", out, "train", images, num_classes=2)
  assert [(r.image_id, r.label) for r in recs] == [("v1.jpg", 1), ("v2.png", 0), ("v5.jpg", 0)]
  # 1-based inclusive -> pixel edges: xmin - 1, ymin - 1, xmax, ymax (1..20 = the whole width);
  # <part> boxes are not objects; fractions rounded outwards.
  np.testing.assert_array_equal(recs[0].boxes, [[0, 0, 20, 16], [4, 4, 10, 10]])
  np.testing.assert_array_equal(recs[1].boxes, [[1, 2, 8, 9]])
  np.testing.assert_array_equal(recs[2].boxes, [[1, 2, 8, 8]])
  with open(os.path.join(out, "train_left_out.json")) as f:
    listing = json.load(f)["images"]
  assert [(x["image"], x["where"], x["kind"]) for x in listing] == [
      ("v3.jpg", f"{anns}/v3.xml", "no object"), ("v4.jpg", f"{anns}/v4.xml", "ambiguous")]
  # --difficult=drop: v1 keeps one box, v5 (only difficult) is left out; --ids picks XMLs.
  ids = _text(tmp / "val.txt", "v1\nv5  1\n\n")
  rc, stdout, _ = _main(capsys, "voc", f"--annotations={anns}", f"--images={images}",
                        f"--out={out}", "--split=val", f"--ids={ids}", "--difficult=drop")
  assert rc == 0 and "1 left out (1 only difficult;" in stdout
  recs = read_split("CUB", out, "val", images)
  assert [(r.image_id, r.label) for r in recs] == [("v1.jpg", 1)]
  np.testing.assert_array_equal(recs[0].boxes, [[0, 0, 20, 16]])


def test_voc_zero_based_xmls(tmp_path, capsys):
  images, anns = tmp_path / "val", tmp_path / "xml"
  _image(str(images / "ILSVRC_val_1.JPEG"), 50, 40)
  # ImageNet style: no extension in <filename>, 0-based coordinates up to W - 1.
  _text(anns / "ILSVRC_val_1.xml", _voc_xml("ILSVRC_val_1", [("n01", (0, 3, 49, 39), 0)]))
  args = ["voc", f"--annotations={anns}", f"--images={images}", f"--out={tmp_path / 'meta'}",
          "--split=train"]
  message = _error(capsys, *args)
  assert message == (f"{anns}/ILSVRC_val_1.xml:8: <bndbox> 0,3,49,39 -> box -1,2,49,39 is outside "
                     "the 50x40 image (boxes are not clipped) (a 0 coordinate: are these XMLs "
                     "0-based? --first_pixel=0)")
  assert _main(capsys, *args, "--first_pixel=0")[0] == 0
  recs = read_split("CUB", str(tmp_path / "meta"), "train", str(images))
  assert recs[0].image_id == "ILSVRC_val_1.JPEG"
  np.testing.assert_array_equal(recs[0].boxes, [[0, 3, 50, 40]])


def test_voc_errors_name_the_file_and_line(voc_data, capsys):
  tmp, anns, images = voc_data
  args = [f"--annotations={anns}", f"--images={images}", f"--out={tmp / 'meta'}", "--split=val"]
  with open(f"{anns}/v2.xml") as f:
    text = f.read()
  _text(f"{anns}/v2.xml", text.replace("</name>\n    <truncated>", "</nam>\n    <truncated>", 1))
  assert _error(capsys, "voc", *args) == (f"{anns}/v2.xml:5:16: malformed XML (mismatched tag)")
  _text(f"{anns}/v2.xml", text.replace("<xmax>8</xmax>", "<xmax>8a</xmax>"))
  assert _error(capsys, "voc", *args) == f"{anns}/v2.xml:11: <xmax> '8a' is not a number"
  _text(f"{anns}/v2.xml", text)
  os.remove(os.path.join(images, "v2.png"))
  message = _error(capsys, "voc", *args)
  assert message.startswith(f"{anns}/v2.xml: no image file: neither {images}/v2.{{jpg,jpeg,png")
  _image(os.path.join(images, "v2.png"), 12, 10)
  _text(f"{anns}/v2b.xml", _voc_xml("v2.png", [("cat", (1, 1, 2, 2), 0)]))
  assert _error(capsys, "voc", *args) == (f"{anns}/v2b.xml: its image 'v2.png' is "
                                          f"{anns}/v2.xml's too (one XML per image)")
  message = _error(capsys, "voc", *args[:2], f"--data_root={tmp / 'elsewhere'}", *args[2:], rc=2)
  assert message.startswith(f"--images={images} is not inside --data_root={tmp / 'elsewhere'}")
  r = _run("voc", *args, "--first_pixel=2")
  assert r.returncode == 2 and r.stderr.startswith("error: argument --first_pixel: invalid choice")
