r"""Where the dense CRF's grid filtering spends its time: each part jitted and timed alone.

  python benchmarks/bench_crf_parts.py [--chunk=4] [--size=224] [--cells=0.5,0.75,1.0]
      [--repeats=3]

The parts of `fcam_jax.losses.crf._grid_filter` on `--chunk` images (what one pass of the
batch_chunk loop filters), the same synthetic photo-like images as bench_crf.py: colour
cell (node and offset per pixel, the self-kernel normalisation), splat (the pixel's K x M
mode-weighted values, dithered rows into the colour grid), colour blur (3 matmuls),
slice (8 gathers per pixel and the sum over the modes); best of `repeats` calls, ms.
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

_SIZE = flags.DEFINE_integer("size", 224, "Image side.")
_CELLS = flags.DEFINE_list("cells", ["0.5", "0.75", "1.0"], "grid_cell values.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (after one warm-up).")
_CHUNK = flags.DEFINE_integer("chunk", 4, "Images per filtering pass.")


def best_ms(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  out = jax.block_until_ready(compiled(*args))
  times = bench_util.interleave({"part": lambda: jax.block_until_ready(compiled(*args))},
                                _REPEATS.value)["part"]
  return out, 1e3 * min(times)


def main(argv):
  del argv
  b, size = _CHUNK.value, _SIZE.value
  images = np.stack([synthetic_image(size, size, seed=i) for i in range(b)])
  probs = np.stack([synthetic_probs(im, seed=i) for i, im in enumerate(images)])
  s, images = jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32)
  print(f"{b} images x {size}x{size} x 2 (one pass), sigma_xy 100, sigma_rgb 15; "
        f"load average {os.getloadavg()[0]:.1f} at start")
  print("| grid_cell | modes x colour nodes | colour cell ms | splat ms | colour blur ms "
        "| slice ms | sum ms | whole filter ms |")
  print("|---|---|---|---|---|---|---|---|")
  for cell in map(float, _CELLS.value):
    c = crf._grid_consts(size, size, 100.0, 15.0, cell)
    (low, frac), t_cell = best_ms(lambda i: crf._colour_cell(i, c), images)
    grid, t_splat = best_ms(lambda s, l, f: crf._splat(s, l, f, c), s, low, frac)
    grid, t_blur = best_ms(lambda g: crf._blur_colour(g, c), grid)
    _, t_slice = best_ms(lambda g, l, f: crf._slice(g.reshape(c.nc ** 3 * b, -1), l, f, c),
                         grid, low, frac)
    _, t_all = best_ms(lambda s, i: crf._grid_filter(s, i, c), s, images)
    parts = (t_cell, t_splat, t_blur, t_slice)
    print(f"| {cell:g} | {c.modes.shape[1]} x {c.nc}^3 | " + " | ".join(f"{t:.1f}" for t in parts)
          + f" | {sum(parts):.1f} | {t_all:.1f} |", flush=True)
  print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
  app.run(main)
