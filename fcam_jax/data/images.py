"""Image files -> uint8 RGB arrays, whatever their mode; errors that name the file.

Files are decoded by content, whatever their extension says (a PNG named `.jpg`
loads as the PNG it is). Decoding memory is bounded: an image of more than
`MAX_PIXELS` pixels is refused from its header, before any pixel is decoded, except a
JPEG, which is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's
`draft`) to fit the limit; images within the limit are decoded in full, as always.
Any size from 1x1 up is accepted (the pipeline resizes every image anyway).
"""

import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image
from PIL import JpegImagePlugin

# 8192 x 8192: at most 192 MiB of RGB per decoded image (PIL warns from 89.5M pixels).
MAX_PIXELS = 1 << 26
_JPEG_MAGIC = b"\xff\xd8\xff"


class ImageError(ValueError):
  """An image file that is missing, empty, corrupt, too large or of an unusable mode."""


def _open(path: str) -> Image.Image:
  if not os.path.isfile(path):
    raise ImageError(f"{path}: no such image file")
  if os.path.getsize(path) == 0:
    raise ImageError(f"{path}: empty (zero-byte) image file")
  try:
    try:
      return Image.open(path)
    except Image.DecompressionBombError:
      with open(path, "rb") as f:
        if f.read(len(_JPEG_MAGIC)) != _JPEG_MAGIC:
          raise
      # A JPEG over PIL's limit: opened without its check, decoded reduced by load_rgb.
      return JpegImagePlugin.JpegImageFile(path)
  except Image.DecompressionBombError as e:
    raise ImageError(f"{path}: too large: {e}") from e
  except (OSError, SyntaxError, ValueError, IndexError, TypeError) as e:
    raise ImageError(f"{path}: unreadable image ({e})") from e


def image_size(path: str) -> Tuple[int, int]:
  """(width, height) from the file header, without decoding the pixels."""
  with _open(path) as img:
    return img.size


def _jpeg_scale(size: Tuple[int, int], max_pixels: int) -> int:
  """The smallest DCT downscale (1, 2, 4 or 8) that brings `size` within max_pixels; 0 if none."""
  w, h = size
  for s in (1, 2, 4, 8):
    if -(-w // s) * -(-h // s) <= max_pixels:
      return s
  return 0


def _to_rgb(img: Image.Image) -> np.ndarray:
  mode = img.mode
  if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    # 16-bit (or 32-bit int) gray: 0..65535 -> 0..255, rounded.
    a = np.asarray(img).astype(np.float64)
    gray = np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "F":
    gray = np.round(np.clip(np.asarray(img, np.float64), 0, 255)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "P" and "transparency" in img.info:
    img = img.convert("RGBA")  # palette transparency only converts cleanly via RGBA
  if img.mode != "RGB":
    img = img.convert("RGB")  # L, 1, LA, RGBA (alpha dropped, not composited), CMYK, YCbCr...
  return np.asarray(img, np.uint8)


def load_rgb(path: str, expect_size: Optional[Tuple[int, int]] = None,
             max_pixels: Optional[int] = None) -> np.ndarray:
  """The image at `path` as uint8 (H, W, 3) RGB.

  Grayscale, palette, CMYK, RGBA/LA (alpha dropped) and 16-bit gray are converted with
  PIL; EXIF orientation is not applied (boxes refer to the stored pixels).
  `expect_size` (width, height), if given, must be the file's size (the metadata's
  image_sizes.txt: a placeholder or a swapped file would put the boxes elsewhere).
  Above `max_pixels` (default MAX_PIXELS) a JPEG is decoded at a reduced scale (the
  array is then smaller than the header's size), any other format refused.
  Raises ImageError naming the file if it is missing, empty, not an image, truncated,
  corrupt, too large, of another size than expected or of an unconvertible mode.
  """
  limit = MAX_PIXELS if max_pixels is None else max_pixels
  with _open(path) as img:
    w, h = img.size
    if expect_size is not None and (w, h) != tuple(expect_size):
      raise ImageError(f"{path}: the file is {w}x{h}, the metadata says "
                       f"{expect_size[0]}x{expect_size[1]} (size mismatch)")
    if w * h > limit:
      scale = _jpeg_scale((w, h), limit) if img.format in ("JPEG", "MPO") else 0
      if not scale:
        raise ImageError(
            f"{path}: too large: {w}x{h} = {w * h} pixels exceeds the decoding limit of "
            f"{limit} (fcam_jax.data.images.MAX_PIXELS; only JPEGs are decoded reduced)")
      img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
    try:
      img.load()
    except (OSError, SyntaxError, ValueError, IndexError, TypeError,
            Image.DecompressionBombError) as e:
      raise ImageError(f"{path}: corrupt, truncated or unsupported {img.format} image "
                       f"of mode {img.mode} ({e})") from e
    try:
      rgb = _to_rgb(img)
    except (OSError, ValueError, TypeError) as e:
      raise ImageError(f"{path}: cannot convert mode {img.mode} to RGB ({e})") from e
  if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
    raise ImageError(f"{path}: decoded to an unusable array of shape {rgb.shape}")
  return np.ascontiguousarray(rgb)
