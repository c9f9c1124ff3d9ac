"""Image files -> uint8 RGB arrays, whatever their mode; errors that name the file."""

import os
from typing import Tuple

import numpy as np
from PIL import Image


class ImageError(ValueError):
  """An image file that is missing, empty, corrupt or of an unusable mode."""


def _open(path: str) -> Image.Image:
  if not os.path.isfile(path):
    raise ImageError(f"{path}: no such image file")
  if os.path.getsize(path) == 0:
    raise ImageError(f"{path}: empty (zero-byte) image file")
  try:
    return Image.open(path)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ImageError(f"{path}: unreadable image ({e})") from e


def image_size(path: str) -> Tuple[int, int]:
  """(width, height) from the file header, without decoding the pixels."""
  with _open(path) as img:
    return img.size


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


def load_rgb(path: str) -> np.ndarray:
  """The image at `path` as uint8 (H, W, 3) RGB.

  Grayscale, palette, CMYK, RGBA/LA (alpha dropped) and 16-bit gray are converted with
  PIL; EXIF orientation is not applied (boxes refer to the stored pixels).
  Raises ImageError naming the file if it is missing, empty, truncated or corrupt.
  """
  with _open(path) as img:
    try:
      img.load()
      rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
      raise ImageError(f"{path}: corrupt or truncated image ({e})") from e
  if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
    raise ImageError(f"{path}: decoded to an unusable array of shape {rgb.shape}")
  return np.ascontiguousarray(rgb)
