"""Bad data in a metadata-layout dataset: refused naming file and line (on_error=fail), or
left out, reported, and never a change of batch shape or a double count (on_error=skip)."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image
import pytest

from fcam_jax import config_lib
from fcam_jax.data import images, pipeline, sources
from fcam_jax.data.metadata import MetadataError
from tests.conftest import REPO, tiny_config

W, H = 24, 16  # the good images' size
NUM_GOOD = 8


def _noise(w, h, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(array, fmt, **kw):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt, **kw)
  return buf.getvalue()


def _gray_jpeg(w, h):
  """A valid baseline JPEG of constant gray 128, built by hand: every 8x8 block is 2 bits
  (DC difference 0, then end-of-block, each a one-code Huffman table), so 20000x20000
  takes 1.6 MB and no full-size array is ever made."""
  def segment(marker, payload):
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload
  one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
  nbits = 2 * -(-w // 8) * -(-h // 8)
  data = b"\x00" * (nbits // 8) + (bytes([(1 << (8 - nbits % 8)) - 1]) if nbits % 8 else b"")
  return (b"\xff\xd8" + segment(0xDB, b"\x00" + b"\x01" * 64)
          + segment(0xC0, struct.pack(">BHHB", 8, h, w, 1) + b"\x01\x11\x00")
          + segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
          + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + data + b"\xff\xd9")


def _png_header_only(w, h):
  """A PNG that announces w x h RGB pixels but holds none (decoding it would fail)."""
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _tiff_12_bit():
  """A TIFF whose BitsPerSample says 12: PIL opens it but has no decoder for it."""
  data = bytearray(_encode(np.zeros((4, 4), np.uint8), "TIFF"))
  ifd = struct.unpack("<I", data[4:8])[0]
  for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
    entry = ifd + 2 + 12 * k
    if struct.unpack("<H", data[entry:entry + 2])[0] == 258:
      data[entry + 8:entry + 10] = struct.pack("<H", 12)
  return bytes(data)


def _truncated_jpeg():
  data = _encode(_noise(64, 64, 1), "JPEG", quality=95)
  return data[:len(data) // 2]


# Files whose bytes are only known by reading them: name -> (bytes, metadata size, reason
# expected in the report, or None where the file is fine and must be used).
CONTENT = {
    "zero_byte": (lambda: b"", (W, H), "empty (zero-byte)"),
    "truncated": (_truncated_jpeg, (64, 64), "truncated"),
    "not_an_image": (lambda: b"<html>404 Not Found</html>", (W, H), "unreadable image"),
    "unsupported_tiff": (_tiff_12_bit, (4, 4), "unsupported TIFF"),
    "placeholder_1x1": (lambda: _encode(np.zeros((1, 1, 3), np.uint8), "PNG"), (W, H),
                        "size mismatch"),
    "huge_png": (lambda: _png_header_only(20000, 20000), (20000, 20000), "too large"),
    "png_named_jpg": (lambda: _encode(_noise(W, H, 5), "PNG"), (W, H), None),
    "one_pixel": (lambda: _encode(np.full((1, 1, 3), 7, np.uint8), "PNG"), (1, 1), None),
    "huge_jpeg": (lambda: _gray_jpeg(20000, 20000), (20000, 20000), None),  # decoded at 1/4
}
# Problems the metadata shows: name -> reason expected in the load error / report.
METADATA = {
    "duplicate_id": "duplicate image id",
    "escaping_id": "must be a relative path inside its root",
    "box_outside": "is outside the 24x16 image",
    "missing_file": "not found",
}


def _lines(path):
  with open(path) as f:
    return f.read().splitlines()


def _dataset(tmp_path, cases, split="train"):
  """A CUB-layout split: NUM_GOOD good JPEGs, then one image per case.

  Returns (metadata root, data root, {case: (image id, expected where)}).
  """
  meta, data = tmp_path / "meta", tmp_path / "images"
  ids, labels, sizes, boxes = [], [], [], []

  def add(image_id, size, label=0, box=None):
    ids.append(image_id)
    labels.append(f"{image_id},{label}")
    sizes.append(f"{image_id},{size[0]},{size[1]}")
    boxes.append(f"{image_id},{box or f'0,0,{size[0]},{size[1]}'}")

  def write(image_id, content):
    path = data / image_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)

  for k in range(NUM_GOOD):
    write(f"good/{k}.jpg", _encode(_noise(W, H, 10 + k), "JPEG", quality=90))
    add(f"good/{k}.jpg", (W, H), label=k % 2)
  ids_file, loc_file = meta / split / "image_ids.txt", meta / split / "localization.txt"
  where = {}
  for case in cases:
    image_id = f"bad/{case}.jpg"
    if case in CONTENT:
      content, size, _ = CONTENT[case]
      write(image_id, content())
      add(image_id, size)
      where[case] = (image_id, f"{ids_file}:{len(ids)}")
    elif case == "duplicate_id":
      ids.append("good/3.jpg")
      where[case] = ("good/3.jpg", f"{ids_file}:{len(ids)}")
    elif case == "escaping_id":
      (tmp_path / "outside.jpg").write_bytes(_encode(_noise(W, H), "JPEG"))
      add("../outside.jpg", (W, H))
      where[case] = ("../outside.jpg", f"{ids_file}:{len(ids)}")
    elif case == "box_outside":
      write(image_id, _encode(_noise(W, H, 3), "JPEG"))
      add(image_id, (W, H), box=f"2,2,{W + 3},{H}")
      where[case] = (image_id, f"{loc_file}:{len(boxes)}")
    elif case == "missing_file":
      add(image_id, (W, H))
      where[case] = (image_id, f"{ids_file}:{len(ids)}")
  (meta / split).mkdir(parents=True)
  for name, lines in (("image_ids.txt", ids), ("class_labels.txt", labels),
                      ("image_sizes.txt", sizes), ("localization.txt", boxes)):
    (meta / split / name).write_text("".join(f"{line}\n" for line in lines))
  return str(meta), str(data), where


GOOD_IDS = [f"good/{k}.jpg" for k in range(NUM_GOOD)]


def _config(tmp_path, meta, data, on_error, **kw):
  c = tiny_config(str(tmp_path / "tfds"))
  c.dataset.name, c.dataset.data_root, c.dataset.metadata_root = "CUB", data, meta
  c.model.num_classes = 2
  c.data.resize_size, c.data.crop_size, c.data.eval_size = 12, 8, 8
  c.data.on_error = on_error
  for key, value in kw.items():
    c.data[key] = value
  return c


def _load(config):
  return sources.load_splits(config, names=("train",))["train"]


def _eval_pass(split, config, batch=4, **kw):
  batches = list(pipeline.eval_batches(split, config, local_batch=batch, **kw))
  for b in batches:
    assert b["image"].shape == (batch, 8, 8, 3) and b["mask"].shape == (batch,)
    assert "_bad" not in b
  return batches


def _counted_ids(split, batches):
  counted = [int(i) for b in batches for i in b["index"][b["mask"]]]
  return sorted(split.records[i].image_id for i in counted), len(counted)


# --- Decoding -------------------------------------------------------------------------


def test_decoding_by_content_and_bounded_memory(tmp_path):
  huge = tmp_path / "huge.jpg"
  huge.write_bytes(_gray_jpeg(20000, 20000))
  assert huge.stat().st_size < 2_000_000
  assert images.image_size(str(huge)) == (20000, 20000)
  # 400M pixels > MAX_PIXELS (2^26): decoded at 1/4 scale, 5000x5000, never in full.
  rgb = images.load_rgb(str(huge))
  assert rgb.shape == (5000, 5000, 3) and (rgb == 128).all()
  bomb = tmp_path / "huge.png"
  bomb.write_bytes(_png_header_only(20000, 20000))  # refused from the header (else: truncated)
  with pytest.raises(images.ImageError, match="too large") as info:
    images.load_rgb(str(bomb))
  assert str(bomb) in str(info.value)
  mid = tmp_path / "mid.png"  # under PIL's own limit, over ours: refused by ours
  mid.write_bytes(_png_header_only(9000, 9000))
  with pytest.raises(images.ImageError, match="81000000 pixels exceeds the decoding limit"):
    images.load_rgb(str(mid))
  # The reduced decode of a JPEG over a (lowered) limit is its 1/4 downscale.
  noise = np.repeat(np.repeat(_noise(100, 100, 2), 4, 0), 4, 1)  # 4x4 constant cells
  photo = tmp_path / "photo.jpg"
  photo.write_bytes(_encode(noise, "JPEG", quality=100))
  small = images.load_rgb(str(photo), max_pixels=100 * 100)
  assert small.shape == (100, 100, 3)
  assert np.abs(small.astype(int) - _noise(100, 100, 2)).mean() < 6
  assert images.load_rgb(str(photo)).shape == (400, 400, 3)
  # A PNG named .jpg is decoded as the PNG it is; a size other than expected is refused.
  fake = tmp_path / "fake.jpg"
  fake.write_bytes(_encode(_noise(W, H, 5), "PNG"))
  np.testing.assert_array_equal(images.load_rgb(str(fake), expect_size=(W, H)), _noise(W, H, 5))
  with pytest.raises(images.ImageError, match=r"is 24x16, the metadata says 16x24"):
    images.load_rgb(str(fake), expect_size=(H, W))


# --- Metadata problems: found at load ---------------------------------------------------


@pytest.mark.parametrize("case", sorted(METADATA))
def test_metadata_problem_fails_at_load_naming_file_and_line(tmp_path, case):
  meta, data, where = _dataset(tmp_path, [case])
  with pytest.raises(MetadataError) as info:
    _load(_config(tmp_path, meta, data, "fail"))
  message = str(info.value)
  assert message.startswith(f"{where[case][1]}: ")
  assert METADATA[case] in message.splitlines()[0]
  assert "on_error=skip" in message


@pytest.mark.parametrize("case", sorted(METADATA))
def test_metadata_problem_is_dropped_and_reported_with_skip(tmp_path, case):
  meta, data, where = _dataset(tmp_path, [case])
  split = _load(_config(tmp_path, meta, data, "skip"))
  # The image at fault is gone (a repeated id: its repeat), every good one is there once.
  assert [r.image_id for r in split.records] == GOOD_IDS
  assert [r.index for r in split.records] == list(range(NUM_GOOD))
  assert len(split) == NUM_GOOD
  (entry,) = split.skipped
  assert (entry["image_id"], entry["where"], entry["found"]) == (*where[case], "load")
  assert METADATA[case] in entry["reason"]
  image_id, counted = _counted_ids(split, _eval_pass(split, _config(tmp_path, meta, data, "skip")))
  assert image_id == sorted(GOOD_IDS) and counted == NUM_GOOD


# --- Image content: found when read -----------------------------------------------------


@pytest.mark.parametrize("case", sorted(CONTENT))
def test_unreadable_image_stops_the_pipeline_before_its_batch(tmp_path, case):
  meta, data, where = _dataset(tmp_path, [case])
  config = _config(tmp_path, meta, data, "fail")
  split = _load(config)  # files are not decoded at load
  assert len(split) == NUM_GOOD + 1
  reason = CONTENT[case][2]
  batches = []
  if reason is None:
    batches = _eval_pass(split, config)
    assert _counted_ids(split, batches) == (sorted(GOOD_IDS + [f"bad/{case}.jpg"]), NUM_GOOD + 1)
    return
  with pytest.raises(images.ImageError) as info:
    for b in pipeline.eval_batches(split, config, local_batch=4):
      batches.append(b)
  assert len(batches) == NUM_GOOD // 4  # it is image 8: the batches before it came through
  message = str(info.value)
  image_id, line = where[case]
  assert message.startswith(f"{line}: image {image_id!r}: {os.path.join(data, image_id)}: ")
  assert reason in message and "on_error=skip" in message


@pytest.mark.parametrize("case", sorted(c for c in CONTENT if CONTENT[c][2]))
def test_unreadable_image_counts_zero_times_in_eval_with_skip(tmp_path, case):
  meta, data, where = _dataset(tmp_path, [case])
  config = _config(tmp_path, meta, data, "skip")
  split = _load(config)
  for processes in (1, 2):
    batches = [b for p in range(processes)
               for b in _eval_pass(split, config, batch=2, process_index=p,
                                   process_count=processes)]
    assert _counted_ids(split, batches) == (sorted(GOOD_IDS), NUM_GOOD)
  (entry,) = split.skipped  # logged once, however often read
  assert (entry["image_id"], entry["where"], entry["found"]) == (*where[case], "read")
  assert CONTENT[case][2] in entry["reason"]


def _expected_train_indices(n, bad, seed, epoch, global_batch):
  """Each position of the epoch's order, an unreadable image replaced by the next readable."""
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  out = []
  for g in range(n // global_batch * global_batch):
    k = 0
    while perm[(g + k) % n] in bad:
      k += 1
    out.append(perm[(g + k) % n])
  return out


def test_training_replaces_unreadable_images_by_the_next_readable_one(tmp_path):
  bad_cases = ["zero_byte", "truncated", "not_an_image", "placeholder_1x1"]
  meta, data, where = _dataset(tmp_path, bad_cases)  # 12 images, 4 unreadable
  config = _config(tmp_path, meta, data, "skip")
  split = _load(config)
  bad = {k for k, r in enumerate(split.records) if r.image_id.startswith("bad/")}
  for epoch in (0, 1):
    whole = list(pipeline.train_batches(split, config, global_batch=4, epoch=epoch, seed=3))
    assert len(whole) == 3 and all(b["image"].shape == (4, 8, 8, 3) for b in whole)
    got = np.concatenate([b["index"] for b in whole]).tolist()
    assert got == _expected_train_indices(12, bad, 3, epoch, 4)
    halves = [list(pipeline.train_batches(split, config, global_batch=4, epoch=epoch, seed=3,
                                          process_index=p, process_count=2)) for p in (0, 1)]
    for step, b in enumerate(whole):  # the same global batches on 2 processes
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step]["index"], halves[1][step]["index"]]), b["index"])
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step]["image"], halves[1][step]["image"]]), b["image"])
  assert sorted((e["image_id"], e["where"]) for e in split.skipped) == sorted(where.values())
  assert all(e["found"] == "read" for e in split.skipped)


def test_training_stops_at_the_step_of_the_unreadable_image_with_fail(tmp_path):
  meta, data, where = _dataset(tmp_path, ["truncated"])
  config = _config(tmp_path, meta, data, "fail")
  split = _load(config)
  # The epoch order is a permutation of (seed, epoch); image 8 is the truncated one.
  positions = [int(np.flatnonzero(np.random.default_rng([0, e]).permutation(9) == 8)[0])
               for e in range(20)]
  remainder = next(e for e, p in enumerate(positions) if p == 8)  # in no batch: not read
  assert len(list(pipeline.train_batches(split, config, global_batch=2, epoch=remainder))) == 4
  epoch = next(e for e, p in enumerate(positions) if 2 <= p < 8)
  got = []
  with pytest.raises(images.ImageError, match="truncated") as info:
    for b in pipeline.train_batches(split, config, global_batch=2, epoch=epoch):
      got.append(b)
  assert len(got) == positions[epoch] // 2
  assert str(info.value).startswith(where["truncated"][1])


# --- All together -----------------------------------------------------------------------


def test_every_fault_at_once(tmp_path):
  cases = sorted(METADATA) + sorted(CONTENT)
  meta, data, where = _dataset(tmp_path, cases)
  with pytest.raises(MetadataError) as info:
    _load(_config(tmp_path, meta, data, "fail"))
  message = str(info.value)
  assert f"({len(METADATA)} problems in all)" in message
  for case in METADATA:
    assert f"{where[case][1]}: " in message

  config = _config(tmp_path, meta, data, "skip")
  split = _load(config)
  usable = GOOD_IDS + [f"bad/{c}.jpg" for c in sorted(CONTENT) if CONTENT[c][2] is None]
  assert sorted(r.image_id for r in split.records) == sorted(
      usable + [f"bad/{c}.jpg" for c in CONTENT if CONTENT[c][2]])
  report = tmp_path / "work" / "skipped_files.json"
  report.parent.mkdir()
  sources.skip_log({"train": split}).write(str(report))
  assert json.loads(report.read_text())["num_problems"] == len(METADATA)
  assert _counted_ids(split, _eval_pass(split, config)) == (sorted(usable), len(usable))
  train = list(pipeline.train_batches(split, config, global_batch=4, epoch=0))
  assert all(b["image"].shape == (4, 8, 8, 3) for b in train)
  assert {split.records[i].image_id for b in train for i in b["index"]} <= set(usable)
  written = json.loads(report.read_text())  # rewritten as the pipeline found more
  expected = {where[c][0]: (where[c][1], METADATA[c]) for c in METADATA}
  expected.update({where[c][0]: (where[c][1], CONTENT[c][2]) for c in CONTENT if CONTENT[c][2]})
  assert written["num_images"] == len(expected) == len(written["files"])
  for entry in written["files"]:
    line, reason = expected[entry["image_id"]]
    assert entry["where"] == line and reason in entry["reason"] and entry["split"] == "train"


def test_verify_scans_every_image_at_load(tmp_path):
  cases = ["zero_byte", "truncated", "huge_png", "png_named_jpg", "missing_file"]
  meta, data, where = _dataset(tmp_path, cases)
  with pytest.raises(MetadataError, match="not found"):  # metadata first: nothing scanned
    _load(_config(tmp_path, meta, data, "fail", verify=True))
  meta, data, where = _dataset(tmp_path / "again", cases[:-1])
  with pytest.raises(images.ImageError) as info:
    _load(_config(tmp_path, meta, data, "fail", verify=True))
  assert "(3 problems in all)" in str(info.value)
  for case in ("zero_byte", "truncated", "huge_png"):
    assert f"{where[case][1]}: " in str(info.value)
  config = _config(tmp_path, meta, data, "skip", verify=True)
  split = _load(config)
  assert sorted(r.image_id for r in split.records) == sorted(GOOD_IDS + ["bad/png_named_jpg.jpg"])
  assert sorted(e["image_id"] for e in split.skipped if e["found"] == "scan") == sorted(
      f"bad/{c}.jpg" for c in ("zero_byte", "truncated", "huge_png"))
  _eval_pass(split, config)
  assert all(e["found"] == "scan" for e in split.skipped)  # nothing left to find when read
  assert sources.scan(split) == []


def test_checks_cli_lists_every_bad_file(tmp_path):
  cases = ["zero_byte", "not_an_image", "box_outside"]
  meta, data, where = _dataset(tmp_path, cases)
  out = tmp_path / "problems.json"
  proc = subprocess.run(
      [sys.executable, "-m", "fcam_jax.data.checks", f"--config={REPO}/configs/cub.py",
       f"--config.dataset.data_root={data}", f"--config.dataset.metadata_root={meta}",
       "--splits=train", f"--output={out}", "--threads=2"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 1, proc.stderr
  for case in cases:
    assert f"{where[case][1]}: " in proc.stdout
  assert "train: 8 good images, 3 with problems" in proc.stdout
  assert {e["image_id"] for e in json.loads(out.read_text())["files"]} == {
      where[c][0] for c in cases}


# --- OpenImages masks -------------------------------------------------------------------


def _openimages(tmp_path, mask_fault):
  meta, data, masks = (tmp_path / d for d in ("meta", "images", "masks"))
  ids, labels, loc = [], [], []
  for k in range(4):
    image_id = f"val/{k}.jpg"
    (data / "val").mkdir(parents=True, exist_ok=True)
    (data / image_id).write_bytes(_encode(_noise(W, H, k), "JPEG"))
    mask = np.zeros((H, W), np.uint8)
    mask[:, : 4 + k] = 255
    (masks / "val").mkdir(parents=True, exist_ok=True)
    (masks / f"val/{k}.png").write_bytes(_encode(mask, "PNG"))
    ids.append(image_id)
    labels.append(f"{image_id},{k % 2}")
    loc.append(f"{image_id},val/{k}.png,")
  bad = masks / "val/2.png"
  if mask_fault == "missing":
    bad.unlink()
  elif mask_fault == "wrong_size":
    bad.write_bytes(_encode(np.zeros((H + 1, W), np.uint8), "PNG"))
  elif mask_fault == "truncated":  # header of the right size, pixels cut off
    data_bytes = _encode(_noise(W, H, 9)[..., 0], "PNG")
    bad.write_bytes(data_bytes[:len(data_bytes) // 2])
  (meta / "val").mkdir(parents=True)
  for name, lines in (("image_ids.txt", ids), ("class_labels.txt", labels),
                      ("localization.txt", loc)):
    (meta / "val" / name).write_text("".join(f"{line}\n" for line in lines))
  return str(meta), str(data), str(masks), f"{meta / 'val' / 'localization.txt'}:3"


def _oi_config(tmp_path, meta, data, masks, on_error):
  c = _config(tmp_path, meta, data, on_error)
  c.dataset.name, c.dataset.mask_root = "OpenImages", masks
  return c


@pytest.mark.parametrize("fault,reason", [
    ("missing", "no such image file"), ("wrong_size", "is 24x17; the image 'val/2.jpg' is 24x16")])
def test_bad_mask_fails_at_load_or_drops_its_image(tmp_path, fault, reason):
  meta, data, masks, line = _openimages(tmp_path, fault)
  with pytest.raises(MetadataError, match=reason) as info:
    sources.load_splits(_oi_config(tmp_path, meta, data, masks, "fail"), names=("val",))
  assert str(info.value).startswith(f"{line}: ")
  config = _oi_config(tmp_path, meta, data, masks, "skip")
  split = sources.load_splits(config, names=("val",))["val"]
  assert [r.image_id for r in split.records] == ["val/0.jpg", "val/1.jpg", "val/3.jpg"]
  assert [(e["where"], reason in e["reason"]) for e in split.skipped] == [(line, True)]


def test_corrupt_mask_is_found_by_the_pipeline_not_the_evaluator(tmp_path):
  meta, data, masks, _ = _openimages(tmp_path, "truncated")
  config = _oi_config(tmp_path, meta, data, masks, "fail")
  split = sources.load_splits(config, names=("val",))["val"]  # headers are fine
  ids_line = f"{os.path.join(meta, 'val', 'image_ids.txt')}:3"
  with pytest.raises(images.ImageError, match="unreadable mask") as info:
    list(pipeline.eval_batches(split, config, local_batch=2))
  assert str(info.value).startswith(f"{ids_line}: image 'val/2.jpg': ")
  config = _oi_config(tmp_path, meta, data, masks, "skip")
  split = sources.load_splits(config, names=("val",))["val"]
  batches = _eval_pass(split, config, batch=2)
  assert _counted_ids(split, batches) == (["val/0.jpg", "val/1.jpg", "val/3.jpg"], 3)
  counted = [int(i) for b in batches for i in b["index"][b["mask"]]]
  for index in counted:  # what the evaluator asks for is cached: no file is read again
    fg, _ = split.mask_loader(index)
    assert fg.shape == (8, 8)
  assert [e["where"] for e in split.skipped] == [ids_line]


def test_on_error_is_checked(tmp_path):
  meta, data, _ = _dataset(tmp_path, [])
  with pytest.raises(config_lib.ConfigError, match="config.data.on_error='ignore'"):
    _load(_config(tmp_path, meta, data, "ignore"))
