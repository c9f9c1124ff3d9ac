"""read_split on miniature wsolevaluation metadata trees: records, masks, and every check."""

import os

import numpy as np
from PIL import Image
import pytest

from fcam_jax.data.metadata import MetadataError, openimages_mask_loader, read_split


def _image(path, w, h, value=0, mode="RGB"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = (h, w, 3) if mode == "RGB" else (h, w)
  Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def _write(directory, files):
  os.makedirs(directory, exist_ok=True)
  for name, lines in files.items():
    with open(os.path.join(directory, name), "w", newline="") as f:
      f.write("".join(line + "\n" for line in lines))


CUB_FILES = {
    "image_ids.txt": ["001.A/a1.jpg", "001.A/a2.jpg", "002.B/b1.jpg"],
    "class_labels.txt": ["001.A/a1.jpg,0", "001.A/a2.jpg,0", "002.B/b1.jpg,1"],
    "image_sizes.txt": ["001.A/a1.jpg,40,30", "001.A/a2.jpg,20,10", "002.B/b1.jpg,16,16"],
    "localization.txt": ["001.A/a1.jpg,1,2,39,30", "001.A/a2.jpg,0,0,20,10",
                         "002.B/b1.jpg,3.5,4,8,9.25", "002.B/b1.jpg,0,0,1,1"],
}
SIZES = {"001.A/a1.jpg": (40, 30), "001.A/a2.jpg": (20, 10), "002.B/b1.jpg": (16, 16)}


@pytest.fixture
def cub(tmp_path):
  meta, data = str(tmp_path / "meta"), str(tmp_path / "images")
  _write(os.path.join(meta, "test"), CUB_FILES)
  for image_id, (w, h) in SIZES.items():
    _image(os.path.join(data, image_id), w, h)
  return meta, data


def _edit(meta, name, lines, split="test"):
  _write(os.path.join(meta, split), {name: lines})


def test_cub_records(cub):
  meta, data = cub
  recs = read_split("CUB", meta, "test", data)
  assert [r.index for r in recs] == [0, 1, 2]
  assert [r.image_id for r in recs] == CUB_FILES["image_ids.txt"]
  assert [r.label for r in recs] == [0, 0, 1]
  assert [(r.width, r.height) for r in recs] == list(SIZES.values())
  assert recs[0].path == os.path.abspath(os.path.join(data, "001.A/a1.jpg"))
  assert recs[2].boxes.dtype == np.float32
  np.testing.assert_array_equal(recs[2].boxes, [[3.5, 4, 8, 9.25], [0, 0, 1, 1]])
  np.testing.assert_array_equal(recs[0].boxes, [[1, 2, 39, 30]])
  assert recs[0].mask_paths == () and recs[0].ignore_path == ""
  # Same records without touching the images, and from <root>/<dataset>/<split>.
  os.rename(meta, meta + "_x")
  os.makedirs(meta)
  os.rename(meta + "_x", os.path.join(meta, "CUB"))
  again = read_split("CUB", meta, "test", "", check_files=False)
  assert [r.image_id for r in again] == [r.image_id for r in recs]
  assert all(r.path == "" for r in again)


def test_crlf_and_blank_lines_are_tolerated(cub):
  meta, data = cub
  with open(os.path.join(meta, "test", "class_labels.txt"), "w", newline="") as f:
    f.write("001.A/a1.jpg,0\r\n\r\n001.A/a2.jpg,0\r\n002.B/b1.jpg,1\r\n\n")
  assert [r.label for r in read_split("CUB", meta, "test", data)] == [0, 0, 1]


def test_training_split_without_localization(cub):
  meta, data = cub
  os.remove(os.path.join(meta, "test", "localization.txt"))
  assert all(len(r.boxes) == 0 for r in read_split("ILSVRC", meta, "test", data))


@pytest.mark.parametrize("name,lines,where,message", [
    ("class_labels.txt", ["001.A/a1.jpg,0,7"], "class_labels.txt:1", "malformed line"),
    ("class_labels.txt", ["001.A/a1.jpg,zero"], "class_labels.txt:1", "not an integer"),
    ("class_labels.txt", ["001.A/a1.jpg,0", "002.B/b1.jpg,1"], "image_ids.txt:2", "no label"),
    ("class_labels.txt", CUB_FILES["class_labels.txt"] + ["001.A/a1.jpg,1"], "class_labels.txt:4",
     "second label"),
    ("class_labels.txt", ["001.A/a1.jpg,0", "001.A/a2.jpg,0", "002.B/b1.jpg,-1"],
     "class_labels.txt:3", "outside"),
    ("image_ids.txt", ["001.A/a1.jpg", "001.A/a2.jpg", "002.B/b1.jpg", "001.A/a2.jpg"],
     "image_ids.txt:4", "duplicate image id"),
    ("image_ids.txt", ["001.A/a1.jpg", "../../etc/passwd"], "image_ids.txt:2", "relative path"),
    ("image_ids.txt", ["001.A/a1.jpg", "/abs/x.jpg"], "image_ids.txt:2", "relative path"),
    ("localization.txt", CUB_FILES["localization.txt"] + ["001.A/a2.jpg,0,0,21,5"],
     "localization.txt:5", "outside the 20x10 image"),
    ("localization.txt", CUB_FILES["localization.txt"] + ["001.A/a2.jpg,-1,0,2,5"],
     "localization.txt:5", "outside"),
    ("localization.txt", CUB_FILES["localization.txt"] + ["001.A/a2.jpg,5,0,2,5"],
     "localization.txt:5", "x1 < x0"),
    ("localization.txt", CUB_FILES["localization.txt"] + ["001.A/a2.jpg,0,6,2,5"],
     "localization.txt:5", "y1 < y0"),
    ("localization.txt", CUB_FILES["localization.txt"] + ["001.A/a2.jpg,0,0,2"],
     "localization.txt:5", "malformed line"),
    ("localization.txt", CUB_FILES["localization.txt"] + ["001.A/a2.jpg,0,0,2,nan"],
     "localization.txt:5", "not finite"),
    ("localization.txt", ["x/unknown.jpg,0,0,1,1"], "localization.txt:1", "not listed"),
    ("localization.txt", CUB_FILES["localization.txt"][1:], "image_ids.txt:1", "no entry"),
    ("image_sizes.txt", ["001.A/a1.jpg,40,30", "001.A/a2.jpg,20,0"], "image_sizes.txt:2",
     "not positive"),
    ("image_sizes.txt", ["001.A/a1.jpg,40,30"], "image_ids.txt:2", "no size"),
])
def test_bad_metadata_names_file_and_line(cub, name, lines, where, message):
  meta, data = cub
  _edit(meta, name, lines)
  with pytest.raises(MetadataError, match=message) as info:
    read_split("CUB", meta, "test", data, check_files=False)
  assert where in str(info.value)


def test_missing_image_and_label_range_and_missing_files(cub):
  meta, data = cub
  os.remove(os.path.join(data, "001.A/a2.jpg"))
  with pytest.raises(MetadataError, match="a2.jpg not found") as info:
    read_split("CUB", meta, "test", data)
  assert "image_ids.txt:2" in str(info.value)
  assert len(read_split("CUB", meta, "test", data, check_files=False)) == 3
  with pytest.raises(MetadataError, match="class_labels.txt:3: label 1 .* outside"):
    read_split("CUB", meta, "test", data, check_files=False, num_classes=1)
  os.remove(os.path.join(meta, "test", "image_sizes.txt"))
  with pytest.raises(MetadataError, match="image_sizes.txt: file not found"):
    read_split("CUB", meta, "test", data, check_files=False)
  with pytest.raises(MetadataError, match="image_ids.txt: file not found"):
    read_split("CUB", meta, "val", data, check_files=False)
  with pytest.raises(MetadataError, match="unknown dataset"):
    read_split("VOC", meta, "test", data)


@pytest.fixture
def openimages(tmp_path):
  meta, data, masks = (str(tmp_path / d) for d in ("meta", "images", "masks"))
  _write(os.path.join(meta, "val"), {
      "image_ids.txt": ["val/c1/a.jpg", "val/c2/b.jpg"],
      "class_labels.txt": ["val/c1/a.jpg,3", "val/c2/b.jpg,0"],
      "localization.txt": ["val/c1/a.jpg,val/c1/a_m1.png,val/c1/a_ignore.png",
                           "val/c1/a.jpg,val/c1/a_m2.png,",
                           "val/c2/b.jpg,val/c2/b_m1.png,"],
  })
  _image(os.path.join(data, "val/c1/a.jpg"), 8, 8)
  _image(os.path.join(data, "val/c2/b.jpg"), 6, 4)
  m1 = np.zeros((8, 8), np.uint8)
  m1[0:4, 0:4] = 255
  m2 = np.zeros((8, 8), np.uint8)
  m2[6:8, 0:8] = 1  # any non-zero value is foreground
  ignore = np.zeros((8, 8), np.uint8)
  ignore[2:6, 2:8] = 255
  b_m1 = np.full((4, 6), 9, np.uint8)
  for name, a in (("val/c1/a_m1.png", m1), ("val/c1/a_m2.png", m2),
                  ("val/c1/a_ignore.png", ignore), ("val/c2/b_m1.png", b_m1)):
    os.makedirs(os.path.dirname(os.path.join(masks, name)), exist_ok=True)
    Image.fromarray(a, "L").save(os.path.join(masks, name))
  return meta, data, masks, (m1, m2, ignore)


def test_openimages_records_and_masks(openimages):
  meta, data, masks, (m1, m2, ignore) = openimages
  recs = read_split("OpenImages", meta, "val", data, masks)
  a, b = recs
  assert (a.width, a.height, b.width, b.height) == (8, 8, 6, 4)  # from the image headers
  assert a.mask_paths == tuple(os.path.abspath(os.path.join(masks, p))
                               for p in ("val/c1/a_m1.png", "val/c1/a_m2.png"))
  assert a.ignore_path == os.path.abspath(os.path.join(masks, "val/c1/a_ignore.png"))
  assert b.ignore_path == "" and a.label == 3 and len(a.boxes) == 0
  assert [(r.width, r.height) for r in read_split("OpenImages", meta, "val", "", masks,
                                                   check_files=False)] == [(0, 0), (0, 0)]
  load = openimages_mask_loader(recs, 4)
  fg, ign = load(0)
  # 8 -> 4 nearest keeps the even rows and columns.
  expected_fg = ((m1 > 0) | (m2 > 0))[::2, ::2]
  np.testing.assert_array_equal(fg, expected_fg)
  np.testing.assert_array_equal(ign, (ignore > 0)[::2, ::2] & ~expected_fg)
  assert not (fg & ign).any()
  fg2, ign2 = load(0)  # from the cache
  np.testing.assert_array_equal(fg2, fg)
  np.testing.assert_array_equal(ign2, ign)
  fg_b, ign_b = load(1)
  assert fg_b.all() and not ign_b.any()


@pytest.mark.parametrize("lines,where,message", [
    (["val/c1/a.jpg,val/c1/a_m1.png,", "val/c1/a.jpg,val/c1/a_m2.png,val/c1/a_ignore.png",
      "val/c2/b.jpg,val/c2/b_m1.png,"], "localization.txt:2", "first line"),
    (["val/c1/a.jpg,../x.png,", "val/c2/b.jpg,val/c2/b_m1.png,"], "localization.txt:1",
     "relative path"),
    (["val/c1/a.jpg,val/c1/a_m1.png", "val/c2/b.jpg,val/c2/b_m1.png,"], "localization.txt:1",
     "malformed"),
    (["val/c1/a.jpg,val/c2/b_m1.png,", "val/c2/b.jpg,val/c2/b_m1.png,"], "localization.txt:1",
     "is 6x4; the image 'val/c1/a.jpg' is 8x8"),
    (["val/c1/a.jpg,val/c1/nope.png,", "val/c2/b.jpg,val/c2/b_m1.png,"], "localization.txt:1",
     "no such image file"),
])
def test_bad_openimages_localization(openimages, lines, where, message):
  meta, data, masks, _ = openimages
  _edit(meta, "localization.txt", lines, "val")
  with pytest.raises(MetadataError, match=message) as info:
    read_split("OpenImages", meta, "val", data, masks)
  assert where in str(info.value)
