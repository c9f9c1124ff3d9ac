"""load_rgb: every PIL mode to uint8 RGB; clear errors for bad files."""

import numpy as np
from PIL import Image
import pytest

from fcam_jax.data.images import ImageError, image_size, load_rgb


def _save(img, tmp_path, name, **kw):
  path = str(tmp_path / name)
  img.save(path, **kw)
  return path


def test_rgb_png_round_trips(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  out = load_rgb(_save(Image.fromarray(rgb), tmp_path, "a.png"))
  assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
  np.testing.assert_array_equal(out, rgb)
  assert image_size(str(tmp_path / "a.png")) == (7, 5)


def test_grayscale_and_bilevel_become_three_equal_channels(tmp_path):
  gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
  out = load_rgb(_save(Image.fromarray(gray, "L"), tmp_path, "g.png"))
  np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
  bits = Image.fromarray(gray > 100).convert("1")
  out = load_rgb(_save(bits, tmp_path, "b.png"))
  np.testing.assert_array_equal(out, np.repeat(np.where(gray > 100, 255, 0)[..., None], 3, -1))


def test_rgba_drops_alpha_without_compositing(tmp_path):
  rgba = np.random.default_rng(1).integers(0, 256, (3, 4, 4), dtype=np.uint8)
  rgba[..., 3] = 0  # fully transparent: the colour must survive anyway
  out = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path, "a.png"))
  np.testing.assert_array_equal(out, rgba[..., :3])
  la = np.stack([np.full((2, 2), 77, np.uint8), np.zeros((2, 2), np.uint8)], -1)
  out = load_rgb(_save(Image.fromarray(la, "LA"), tmp_path, "la.png"))
  assert (out == 77).all()


def test_palette_with_and_without_transparency(tmp_path):
  palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
  index = np.array([[0, 1], [2, 1]], np.uint8)
  img = Image.fromarray(index, "P")
  img.putpalette(palette)
  expected = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [0, 255, 0]]], np.uint8)
  np.testing.assert_array_equal(load_rgb(_save(img, tmp_path, "p.png")), expected)
  np.testing.assert_array_equal(load_rgb(_save(img, tmp_path, "pt.png", transparency=1)), expected)


def test_cmyk_jpeg_is_converted(tmp_path):
  cmyk = np.zeros((8, 8, 4), np.uint8)
  cmyk[..., 0] = 255  # full cyan, no black -> (0, 255, 255) in PIL's naive conversion
  out = load_rgb(_save(Image.fromarray(cmyk, "CMYK"), tmp_path, "c.jpg", quality=100))
  assert out.shape == (8, 8, 3)
  assert np.abs(out.astype(int) - [0, 255, 255]).max() <= 3


def test_16_bit_gray_is_scaled_to_8_bit(tmp_path):
  values = np.array([[0, 257, 1000], [32768, 65535, 128]], np.uint16)
  img = Image.fromarray(values)  # mode I;16
  out = load_rgb(_save(img, tmp_path, "d.png"))
  expected = np.array([[round(v / 257) for v in row] for row in values.tolist()], np.uint8)
  np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, -1))


def test_bad_files_raise_image_error_naming_the_file(tmp_path):
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  good = _save(Image.fromarray(noise), tmp_path, "ok.jpg", quality=95)
  empty = tmp_path / "empty.jpg"
  empty.write_bytes(b"")
  garbage = tmp_path / "garbage.png"
  garbage.write_bytes(b"this is not an image at all")
  truncated = tmp_path / "trunc.jpg"
  data = open(good, "rb").read()
  truncated.write_bytes(data[:len(data) // 2])  # header intact, pixels cut
  for path, what in ((tmp_path / "missing.jpg", "no such"), (empty, "empty"),
                     (garbage, "unreadable"), (truncated, "truncated")):
    with pytest.raises(ImageError, match=what) as info:
      load_rgb(str(path))
    assert str(path) in str(info.value)
  assert issubclass(ImageError, ValueError)
