"""Post-processing of CAMs: per-image min-max normalization and bilinear resizing."""

from typing import Tuple

import jax.numpy as jnp
import numpy as np
from jax import lax


def minmax_normalize(cams: jnp.ndarray) -> jnp.ndarray:
  """(B, h, w) -> per-image `(cam - min) / (max - min)`; a constant map -> zeros."""
  cams = cams.astype(jnp.float32)
  lo = jnp.min(cams, axis=(1, 2), keepdims=True)
  span = jnp.max(cams, axis=(1, 2), keepdims=True) - lo
  ok = span > 0
  return jnp.where(ok, (cams - lo) / jnp.where(ok, span, 1.0), 0.0)


def _interp_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's 1-D linear interpolation, align_corners=False."""
  scale = in_size / out_size
  src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = src - i0
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m.astype(np.float32)


def upsample(cams: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """(B, h, w) -> (B, H, W) bilinear, half-pixel centres, edges clamped.

  Equals torch `F.interpolate(mode='bilinear', align_corners=False)` (no
  antialiasing, also when shrinking). Separable: two small matmuls.
  """
  h, w = cams.shape[-2:]
  rows = jnp.asarray(_interp_matrix(h, size[0]))
  cols = jnp.asarray(_interp_matrix(w, size[1]))
  # HIGHEST: TPU/GPU would otherwise round the operands to bf16/tf32.
  return jnp.einsum("oh,bhw,pw->bop", rows, cams.astype(jnp.float32), cols,
                    precision=lax.Precision.HIGHEST)
