"""The synthetic WSOL dataset: deterministic, stored as TFDS array_record, part-vs-object by design."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from fcam_jax.data import synthetic


def test_render_is_deterministic_and_seed_dependent():
  a = synthetic.example(0, "train", 3, 5, 48)
  b = synthetic.example(0, "train", 3, 5, 48)
  c = synthetic.example(1, "train", 3, 5, 48)
  assert a["image"] == b["image"] and a["mask"] == b["mask"]
  assert a["image"] != c["image"]


@pytest.mark.parametrize("label", range(len(synthetic.GLYPHS)))
def test_glyph_is_a_small_part_inside_the_object(label):
  for i in range(5):
    rng = np.random.default_rng([7, label, i])
    image, mask = synthetic.render(rng, 80, label)
    colour = synthetic._GLYPH_COLOURS[label]
    # Glyph pixels: within noise of the class colour. They lie on the object.
    glyph = np.abs(image.astype(np.float32) - colour).max(-1) < 30
    glyph &= mask  # the background may by chance come close to the colour
    assert glyph.sum() >= 8
    ys, xs = np.nonzero(glyph)
    assert mask[ys, xs].all()
    # ...and they are a small part of it: the object is what F-CAM must recover.
    assert glyph.sum() < 0.25 * mask.sum()
    assert 0.04 * 80 * 80 < mask.sum() < 0.6 * 80 * 80


def test_box_is_the_mask_extent_in_cub_convention():
  mask = np.zeros((10, 12), bool)
  mask[2:5, 3:9] = True
  np.testing.assert_array_equal(synthetic.box_of(mask), [[3, 2, 9, 5]])


def test_prepare_writes_array_record_splits_and_reuses_them(tmp_path):
  builder = synthetic.prepare(str(tmp_path), num_classes=3, image_size=32, sizes=(9, 4, 5), seed=2)
  files = glob.glob(os.path.join(str(tmp_path), "**", "*.array_record*"), recursive=True)
  assert files, "no array_record files written"
  src = builder.as_data_source()
  assert {k: len(v) for k, v in src.items()} == {"train": 9, "val": 4, "test": 5}
  ex = src["test"][0]
  assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
  assert ex["mask"].shape == (32, 32, 1)
  labels = sorted(int(src["train"][i]["label"]) for i in range(9))
  assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  # The stored example is exactly what the generator renders.
  ref = synthetic.example(2, "test", int(ex["image_id"].decode().split("/")[1][:5]), 3, 32)
  assert ref["label"] == int(ex["label"])
  np.testing.assert_array_equal(ref["boxes"], ex["boxes"])
  mtime = os.path.getmtime(files[0])
  synthetic.prepare(str(tmp_path), num_classes=3, image_size=32, sizes=(9, 4, 5), seed=2)
  assert os.path.getmtime(files[0]) == mtime


def test_generation_and_reading_need_no_tensorflow(tmp_path):
  code = ("import sys; from fcam_jax.data import synthetic; "
          f"b = synthetic.prepare({str(tmp_path)!r}, 2, 24, (2, 2, 2)); "
          "b.as_data_source()['train'][0]; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]


def test_bad_generation_parameters_are_refused():
  with pytest.raises(ValueError, match="classes"):
    synthetic.config_for(len(synthetic.GLYPHS) + 1, 64, (1, 1, 1), 0)
  with pytest.raises(ValueError, match="pixels"):
    synthetic.config_for(3, 8, (1, 1, 1), 0)
