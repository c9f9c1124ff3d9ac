r"""Where the dense CRF's grid filtering spends its time: each part jitted and timed alone.

  python benchmarks/bench_crf_parts.py [--batch=32] [--size=224] [--cells=0.5,0.75,1.0]
      [--repeats=3]

The parts of `fcam_jax.losses.crf._grid_filter` on the whole batch (batch_chunk 0), the
same synthetic photo-like images as bench_crf.py: splat (nearest node, one scatter row
per pixel), modes (the spatial nodes' grids onto the spatial operator's leading modes,
one matmul, where they are few), colour blur (3 matmuls), expand (spatial blur +
interpolation to the tiles, one matmul), slice (trilinear, 8 gathers per pixel); best
of `repeats` calls, ms.
"""

import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_util  # noqa: E402
from fcam_jax.losses import crf  # noqa: E402
from tests.losses.test_crf import synthetic_image, synthetic_probs  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 32, "Images per call.")
_SIZE = flags.DEFINE_integer("size", 224, "Image side.")
_CELLS = flags.DEFINE_list("cells", ["0.5", "0.75", "1.0"], "grid_cell values.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (after one warm-up).")


def best_ms(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  out = jax.block_until_ready(compiled(*args))
  times = bench_util.interleave({"part": lambda: jax.block_until_ready(compiled(*args))},
                                _REPEATS.value)["part"]
  return out, 1e3 * min(times)


def main(argv):
  del argv
  b, size = _BATCH.value, _SIZE.value
  images = np.stack([synthetic_image(size, size, seed=i) for i in range(b)])
  probs = np.stack([synthetic_probs(im, seed=i) for i, im in enumerate(images)])
  s, images = jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32)
  print(f"batch {b} x {size}x{size} x 2, sigma_xy 100, sigma_rgb 15, whole batch; "
        f"load average {os.getloadavg()[0]:.1f} at start")
  print("| grid_cell | splat ms | to modes ms | colour blur ms | expand to tiles ms | slice ms "
        "| sum ms |")
  print("|---|---|---|---|---|---|---|")
  for cell in map(float, _CELLS.value):
    c = crf._grid_consts(size, size, 100.0, 15.0, cell)
    grid, t_splat = best_ms(lambda s, i: crf._splat(s, i, c), s, images)
    grid, t_modes = best_ms(lambda g: crf._to_modes(g, c), grid)
    grid, t_blur = best_ms(lambda g: crf._blur_colour(g, c), grid)
    grid, t_expand = best_ms(lambda g: crf._expand(g, c), grid)
    _, t_slice = best_ms(lambda g, i: crf._slice(g, i, c), grid, images)
    parts = (t_splat, t_modes, t_blur, t_expand, t_slice)
    print(f"| {cell:g} | " + " | ".join(f"{t:.0f}" for t in parts) + f" | {sum(parts):.0f} |",
          flush=True)
  print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
  app.run(main)
