r"""Speed and accuracy of the dense CRF loss (fcam_jax.losses.dense_crf_loss), design §6.

  python benchmarks/bench_crf.py [--batch=32] [--size=224] [--cells=0.5,0.75,1.0]
      [--chunks=4] [--exact_size=112] [--repeats=3] [--warmup=1]
  python benchmarks/bench_crf.py --accuracy [--accuracy_size=64] [--cells=0.5,1.0]

Timing: loss + gradient w.r.t. the probabilities, jitted, `batch` x size x size x 2 classes,
seconds per call (the best of `repeats` calls after `warmup` calls, all listed) for each
grid_cell x batch_chunk (images per grid pass, 0: the whole batch); `temp MB` is XLA's temporary
buffer size for that program. The error columns compare with the exact O(N^2) sum (numpy
float64) on one synthetic photo-like image of `exact_size` (loss: relative error; gradient:
cosine similarity). benchmarks/bench_crf_natural.py has the natural-image accuracy table
and the comparison with the original's C++ permutohedral lattice.

--accuracy: the sigma sweep (sigma_xy in 5..100 x sigma_rgb in 5, 15, 30) at
`accuracy_size`, for `method='auto'` at the first cell and for the grid at each cell
(n/a where the grid would have more than --max_grid_nodes nodes).
"""

import itertools
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcam_jax.losses import crf  # noqa: E402
from tests.losses.test_crf import (cosine, exact_loss_and_grad, synthetic_image,  # noqa: E402
                                   synthetic_probs)

_BATCH = flags.DEFINE_integer("batch", 32, "Images per call.")
_SIZE = flags.DEFINE_integer("size", 224, "Image side for the timing.")
_CELLS = flags.DEFINE_list("cells", ["0.5", "0.75", "1.0"], "grid_cell values.")
_CHUNKS = flags.DEFINE_list("chunks", ["-1"], "batch_chunk values (0: the whole batch, "
                            "-1: crf.default_batch_chunk for the backend).")
_SIGMA_XY = flags.DEFINE_float("sigma_xy", 100.0, "sigma_xy for the timing.")
_SIGMA_RGB = flags.DEFINE_float("sigma_rgb", 15.0, "sigma_rgb for the timing.")
_METHOD = flags.DEFINE_enum("method", "auto", list(crf.METHODS), "Method for the timing.")
_EXACT_SIZE = flags.DEFINE_integer("exact_size", 112, "Image side for the error columns (0: skip).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls before timing.")
_ACCURACY = flags.DEFINE_bool("accuracy", False, "Run the sigma sweep instead of the timing.")
_ACCURACY_SIZE = flags.DEFINE_integer("accuracy_size", 64, "Image side of the sigma sweep.")
_MAX_GRID_NODES = flags.DEFINE_float("max_grid_nodes", 2e7, "Sweep: skip larger grids.")


def loss_and_grad_fn(**kwargs):
  return jax.jit(jax.value_and_grad(lambda p, i: crf.dense_crf_loss(p, i, **kwargs)))


def error(probs, images, reference, **kwargs):
  ref_loss, ref_grad = reference
  loss, grad = loss_and_grad_fn(**kwargs)(jnp.asarray(probs, jnp.float32),
                                          jnp.asarray(images, jnp.float32))
  return float(loss) / ref_loss - 1, cosine(np.asarray(grad), ref_grad)


def grid_nodes(size, sigma_xy, sigma_rgb, cell):
  """(grid values per image and channel, 'M modes x nc^3')."""
  c = crf._grid_consts(size, size, sigma_xy, sigma_rgb, cell)
  modes = c.modes.shape[1]
  return modes * c.nc ** 3, f"{modes} x {c.nc}^3"


def one_image(size, seed=0):
  image = synthetic_image(size, size, seed)
  return synthetic_probs(image, seed)[None], image[None]


def timing():
  b, size = _BATCH.value, _SIZE.value
  sxy, srgb = _SIGMA_XY.value, _SIGMA_RGB.value
  images = np.stack([synthetic_image(size, size, seed=i) for i in range(b)])
  probs = np.stack([synthetic_probs(im, seed=i) for i, im in enumerate(images)])
  args = (jnp.asarray(probs, jnp.float32), jnp.asarray(images, jnp.float32))
  reference = None
  if _EXACT_SIZE.value:
    small = one_image(_EXACT_SIZE.value)
    start = time.perf_counter()
    reference = small, exact_loss_and_grad(*small, sxy, srgb)
    print(f"exact reference at {_EXACT_SIZE.value}x{_EXACT_SIZE.value}: "
          f"{time.perf_counter() - start:.1f} s (numpy float64)")
  print(f"batch {b} x {size}x{size} x 2, sigma_xy {sxy:g}, sigma_rgb {srgb:g}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
  print(f"{'cell':>5} {'chunk':>5} {'method':>6} {'grid (modes x colour)':>36} "
        f"{'compile s':>9} {'ms/batch':>9} {'temp MB':>8} {'loss err':>9} {'grad cos':>9}")
  for cell, chunk in itertools.product(map(float, _CELLS.value), map(int, _CHUNKS.value)):
    kwargs = dict(sigma_xy=sxy, sigma_rgb=srgb, grid_cell=cell, method=_METHOD.value,
                  batch_chunk=chunk)
    method = crf._plan(probs.shape, sxy, srgb, cell, _METHOD.value).method
    start = time.perf_counter()
    compiled = loss_and_grad_fn(**kwargs).lower(*args).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    temp = stats.temp_size_in_bytes / 2 ** 20 if stats is not None else float("nan")
    for _ in range(_WARMUP.value):
      jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
    err, cos = float("nan"), float("nan")
    if reference is not None:
      err, cos = error(*reference[0], reference[1], **kwargs)
    nodes = grid_nodes(size, sxy, srgb, cell)[1] if method == "grid" else "-"
    print(f"{cell:5.2f} {chunk:5d} {method:>6} {nodes:>36} {compile_s:9.1f} "
          f"{1e3 * min(times):9.0f} {temp:8.0f} {100 * err:+8.2f}% {cos:9.5f}   (all ms: "
          f"{', '.join(f'{1e3 * t:.0f}' for t in times)})", flush=True)
  print(f"load average {os.getloadavg()[0]:.1f} at end")


def sweep():
  size, cells = _ACCURACY_SIZE.value, [float(c) for c in _CELLS.value]
  probs, images = one_image(size)
  print(f"{size}x{size}, one synthetic image; loss error % / gradient cosine vs exact")
  header = f"{'sigma_xy':>8} {'sigma_rgb':>9} {f'auto@{cells[0]:g}':>22}"
  print(header + "".join(f"{f'grid@{c:g}':>22}" for c in cells))
  for sxy in (5.0, 10.0, 25.0, 50.0, 100.0):
    for srgb in (5.0, 15.0, 30.0):
      reference = exact_loss_and_grad(probs, images, sxy, srgb)
      method = crf._plan(probs.shape, sxy, srgb, cells[0], "auto").method
      err, cos = error(probs, images, reference, sigma_xy=sxy, sigma_rgb=srgb,
                       grid_cell=cells[0])
      row = f"{sxy:8g} {srgb:9g} {f'{method} {100 * err:+.2f}% {cos:.5f}':>22}"
      for cell in cells:
        if grid_nodes(size, sxy, srgb, cell)[0] > _MAX_GRID_NODES.value:
          row += f"{'n/a':>22}"
          continue
        err, cos = error(probs, images, reference, sigma_xy=sxy, sigma_rgb=srgb,
                         grid_cell=cell, method="grid")
        row += f"{f'{100 * err:+.2f}% {cos:.5f}':>22}"
      print(row, flush=True)


def main(argv):
  del argv
  sweep() if _ACCURACY.value else timing()


if __name__ == "__main__":
  app.run(main)
