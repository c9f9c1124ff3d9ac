"""The Otsu threshold of the seeds is clamped to [1, 254] (docs/design.md §6).

On a normal CAM Otsu's level is far from 0, so the clamp only shows on a low-contrast
map whose best split is {q = 0} vs {q > 0} while some pixels have q = 1: there the
foreground is q > 1, not q > 0. (The upper bound 254 never binds: a level needs a
non-empty class above it, so it is at most 254 already.)
"""

import jax
import jax.numpy as jnp
import numpy as np

from fcam_jax import losses


def otsu64(q):
  """The level t in 0..255 maximizing w1 w2 (m1 - m2)^2 of {q <= t} vs {q > t}, float64,
  levels with an empty class excluded, the lowest among equal maxima."""
  values = q.ravel().astype(np.float64)
  best, best_t = -1.0, None
  for t in range(256):
    low, high = values[values <= t], values[values > t]
    if len(low) == 0 or len(high) == 0:
      continue
    var = len(low) * len(high) * (low.mean() - high.mean()) ** 2
    if var > best:
      best, best_t = var, t
  return best_t


def test_low_contrast_cam_uses_the_clamped_level():
  h = w = 24
  q = np.zeros((h, w), np.int64)
  q[:, w // 2:] = 1
  q[10:14, 2:6] = 2  # 16 pixels
  assert otsu64(q) == 0  # the case the clamp is for
  cam = ((q + 0.5) / 255).astype(np.float32)  # uint8(cam * 255) == q
  assert np.array_equal((cam * np.float32(255)).astype(np.uint8), q)
  assert int(losses.otsu_threshold(jnp.asarray(q, jnp.int32))) == 0  # before the clamp

  expected = q > max(otsu64(q), 1)  # the 4x4 block
  for erosion in (1, 11):  # 11: erodes the block away, so it stays uneroded
    fg, _ = jax.jit(lambda c, e=erosion: losses.seed_regions(c, erosion=e))(
        jnp.asarray(cam[None]))
    np.testing.assert_array_equal(np.asarray(fg[0]), expected, err_msg=f"erosion {erosion}")
