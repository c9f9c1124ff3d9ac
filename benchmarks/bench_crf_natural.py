r"""The dense CRF loss on natural-looking images: accuracy, speed, the original's kernel.

  python benchmarks/bench_crf_natural.py --mode=accuracy [--sizes=64,96,112]
      [--cells=0.5,0.75,1.0] [--sigma_rgbs=5,15,30] [--sigma_xys=scaled,100]
      [--baseline=REV] [--precision=highest|default]
  python benchmarks/bench_crf_natural.py --mode=timing [--batch=32] [--size=224]
      [--cells=0.5,1.0] [--rounds=5] [--baseline=REV] [--lattice=DIR]
  python benchmarks/bench_crf_natural.py --mode=mass --lattice=DIR [--size=224]
      [--cells=0.5,1.0]

accuracy: for each image size x sigma_xy x sigma_rgb x grid_cell, the loss and its
gradient (the custom VJP) on every image of `natural_images.natural_set` (12 kinds x 2
logit fields) against the exact O(N^2) sum in float64; the gradient is taken with
respect to the two logits (through the softmax), where the training signal is. Each
table cell is the worst image: the largest |loss error| and the smallest gradient
cosine. sigma_xy `scaled` is the paper's 100 at 224 px scaled to the size. `--baseline`
also evaluates crf.py as of that git revision (e.g. the commit before a change).
`--precision=default` runs the CRF's matrix products at XLA's default precision (TF32 on
a GPU, one bf16 pass on a TPU) instead of the explicit HIGHEST.

timing: loss + gradient, jitted, batch x size x size x 2 on natural images, each program
called in turn (A, B, A, B, ...) `rounds` times after one warm-up; with `--lattice`, the
original's C++ permutohedral lattice (sbelharbi/fcam-wsol dlib/crf/crfwrapper/
bilateralfilter, built there with SWIG as its setup.py does) in the same rounds.

mass: the original lattice's loss and logit gradient against the exact sum on the
natural set at the default sigmas (100, 15), as ratios: how much weaker its kernel is;
with, for scale, the lattice's and fcam_jax's grid's logit-gradient cosines.
"""

import functools
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_util  # noqa: E402
import natural_images  # noqa: E402
from fcam_jax.losses import crf  # noqa: E402

_MODE = flags.DEFINE_enum("mode", "accuracy", ["accuracy", "timing", "mass"], "What to run.")
_SIZES = flags.DEFINE_list("sizes", ["64", "96", "112"], "accuracy: image sides.")
_CELLS = flags.DEFINE_list("cells", ["0.5", "0.75", "1.0"], "grid_cell values.")
_SIGMA_RGBS = flags.DEFINE_list("sigma_rgbs", ["5", "15", "30"], "accuracy: sigma_rgb values.")
_SIGMA_XYS = flags.DEFINE_list("sigma_xys", ["scaled", "100"],
                               "accuracy: sigma_xy values; `scaled` = 100 * size / 224.")
_SEED = flags.DEFINE_integer("seed", 0, "Image set seed.")
_BASELINE = flags.DEFINE_string("baseline", "", "git revision of crf.py to compare with.")
_PRECISION = flags.DEFINE_enum("precision", "highest", ["highest", "default"],
                               "Precision of the CRF's matrix products.")
_MAX_ROWS = flags.DEFINE_float("max_rows", 6e7, "accuracy: skip grids with more rows.")
_BATCH = flags.DEFINE_integer("batch", 32, "timing: images per call.")
_SIZE = flags.DEFINE_integer("size", 224, "timing / mass: image side.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timing: rounds.")
_LATTICE = flags.DEFINE_string("lattice", "", "Directory of the original's built "
                               "bilateralfilter module (timing, mass).")
_CACHE = flags.DEFINE_string("cache", os.path.join(tempfile.gettempdir(), "crf_exact_cache"),
                             "Where the exact sums are cached.")


# ------------------------------------------------------------------ the exact sum


@jax.jit
def _exact_rows(f_rows, f, v):
  d2 = (jnp.sum(f_rows * f_rows, 1)[:, None] + jnp.sum(f * f, 1)[None]
        - 2 * f_rows @ f.T)
  return jnp.exp(-0.5 * jnp.maximum(d2, 0.0)) @ v


def exact_filter(values, image, sigma_xy, sigma_rgb, chunk=1024):
  """W v with the exact kernel in float64 (jax x64): values (H,W,K), image (H,W,3); cached."""
  key = hashlib.sha1(b"".join([np.ascontiguousarray(values, np.float64).tobytes(),
                               np.ascontiguousarray(image, np.float64).tobytes(),
                               np.float64([sigma_xy, sigma_rgb]).tobytes()])).hexdigest()
  path = os.path.join(_CACHE.value, key + ".npy")
  if os.path.exists(path):
    return np.load(path)
  h, w, k = values.shape
  yy, xx = np.mgrid[0:h, 0:w]
  f = np.concatenate([np.stack([xx, yy], -1) / sigma_xy, image / sigma_rgb], -1)
  with jax.enable_x64(True):
    f = jnp.asarray(f.reshape(-1, 5), jnp.float64)
    v = jnp.asarray(values.reshape(-1, k), jnp.float64)
    out = np.concatenate([np.asarray(_exact_rows(f[i:i + chunk], f, v))
                          for i in range(0, h * w, chunk)])
  out = out.reshape(h, w, k)
  os.makedirs(_CACHE.value, exist_ok=True)
  np.save(path, out)
  return out


def logit_grad(probs, grad_probs):
  """The gradient w.r.t. the logits from that w.r.t. the softmax probabilities."""
  return probs * (grad_probs - np.sum(probs * grad_probs, -1, keepdims=True))


def cosine(a, b):
  a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


# ------------------------------------------------------------- implementations


def load_crf(rev):
  """fcam_jax/losses/crf.py as of git revision `rev`, as a module."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = subprocess.run(["git", "-C", root, "show", f"{rev}:fcam_jax/losses/crf.py"],
                       check=True, capture_output=True, text=True).stdout
  path = os.path.join(tempfile.mkdtemp(), f"crf_{rev.replace('/', '_')}.py")
  with open(path, "w") as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location(f"crf_{rev}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def implementations():
  impls = {"new": crf}
  if _BASELINE.value:
    impls = {f"old ({_BASELINE.value})": load_crf(_BASELINE.value), **impls}
  if _PRECISION.value == "default":
    for module in impls.values():
      if hasattr(module, "_PRECISION"):
        module._PRECISION = jax.lax.Precision.DEFAULT
  return impls


def per_image_loss_and_logit_grad(module, logits, images, **kwargs):
  """Each image alone: (losses (N,), gradients w.r.t. the logits (N,H,W,2))."""
  def one(args):
    z, image = args
    loss = lambda z: module.dense_crf_loss(jax.nn.softmax(z, -1)[None], image[None], **kwargs)
    return jax.value_and_grad(loss)(z)
  fn = jax.jit(lambda z, i: jax.lax.map(one, (z, i)))
  losses, grads = fn(jnp.asarray(logits, jnp.float32), jnp.asarray(images, jnp.float32))
  return np.asarray(losses, np.float64), np.asarray(grads, np.float64)


def grid_rows(module, size, sigma_xy, sigma_rgb, cell):
  """Grid size (values per image and channel) of `module`'s grid at these settings."""
  c = module._grid_consts(size, size, sigma_xy, sigma_rgb, cell)
  if hasattr(c, "space"):  # crf.py before the per-pixel spatial modes
    return max(c.nodes, c.space.shape[0]) * c.nc ** 3
  return c.modes.shape[1] * c.nc ** 3


# -------------------------------------------------------------------------- modes


def accuracy():
  impls = implementations()
  cells = [float(c) for c in _CELLS.value]
  print(f"natural set seed {_SEED.value}: {len(natural_images.KINDS)} kinds x 2 logit fields; "
        f"worst image per cell: loss error % / cosine of the logit gradient; "
        f"precision {_PRECISION.value}; {bench_util.load()}")
  head = "| impl | size | sigma_xy | sigma_rgb | " + " | ".join(f"grid_cell {c:g}" for c in cells)
  print(head + " |\n" + "|---" * (4 + len(cells)) + "|")
  worst = {(name, c): [0.0, 1.0] for name in impls for c in cells}
  for size in map(int, _SIZES.value):
    names, images, logits = natural_images.natural_set(size, _SEED.value)
    probs = natural_images.softmax(logits)
    for sxy_flag in _SIGMA_XYS.value:
      sxy = 100.0 * size / 224 if sxy_flag == "scaled" else float(sxy_flag)
      for srgb in map(float, _SIGMA_RGBS.value):
        ws = np.stack([exact_filter(p, i, sxy, srgb) for p, i in zip(probs, images)])
        ref_loss = -np.sum(probs * ws, (1, 2, 3))
        ref_grad = logit_grad(probs, -2.0 * ws)
        for name, module in impls.items():
          row = f"| {name} | {size} | {sxy:.4g} | {srgb:g} |"
          for cell in cells:
            if grid_rows(module, size, sxy, srgb, cell) > _MAX_ROWS.value:
              row += " n/a |"
              continue
            losses, grads = per_image_loss_and_logit_grad(
                module, logits, images, sigma_xy=sxy, sigma_rgb=srgb, grid_cell=cell,
                method="grid")
            errs = losses / ref_loss - 1
            coss = np.array([cosine(g, r) for g, r in zip(grads, ref_grad)])
            e, k = np.argmax(np.abs(errs)), np.argmin(coss)
            row += f" {100 * errs[e]:+.2f}% {coss[k]:.4f} ({names[k].split('/')[0]}) |"
            w = worst[(name, cell)]
            w[0] = errs[e] if abs(errs[e]) > abs(w[0]) else w[0]
            w[1] = min(w[1], coss[k])
          print(row, flush=True)
  for name in impls:
    print(f"worst over the table, {name}: " + ", ".join(
        f"grid_cell {c:g}: {100 * worst[(name, c)][0]:+.2f}% {worst[(name, c)][1]:.4f}"
        for c in cells))
  print(bench_util.load())


def natural_batch(batch, size, seed=0):
  """`batch` images cycling over the kinds (and logit fields), as float32 arrays."""
  names, images, logits = [], [], []
  s = seed
  while len(images) < batch:
    n, i, z = natural_images.natural_set(size, s)
    names += n
    images.append(i)
    logits.append(z)
    s += 1
  images = np.concatenate(images)[:batch].astype(np.float32)
  probs = natural_images.softmax(np.concatenate(logits)[:batch]).astype(np.float32)
  return names[:batch], probs, images


def load_lattice():
  sys.path.insert(0, _LATTICE.value)
  import bilateralfilter  # pylint: disable=g-import-not-at-top
  return bilateralfilter


def lattice_filter(lattice, probs, images, sigma_xy=100.0, sigma_rgb=15.0):
  """The original's W S (B,H,W,K) for probs (B,H,W,K), images (B,H,W,3), 2 OpenMP threads
  at most (its own min(threads, batch))."""
  b, h, w, k = probs.shape
  out = np.zeros(b * k * h * w, np.float32)
  lattice.bilateralfilter_batch(np.ascontiguousarray(images.transpose(0, 3, 1, 2)).ravel(),
                                np.ascontiguousarray(probs.transpose(0, 3, 1, 2)).ravel(),
                                out, b, k, h, w, sigma_rgb, sigma_xy)
  return out.reshape(b, k, h, w).transpose(0, 2, 3, 1)


def timing():
  impls = implementations()
  b, size = _BATCH.value, _SIZE.value
  _, probs, images = natural_batch(b, size)
  args = jnp.asarray(probs), jnp.asarray(images)
  fns = {}
  for cell in map(float, _CELLS.value):
    for name, module in impls.items():
      fn = jax.jit(jax.value_and_grad(
          functools.partial(module.dense_crf_loss, grid_cell=cell)))
      compiled = fn.lower(*args).compile()
      jax.block_until_ready(compiled(*args))
      fns[f"{name} @ {cell:g}"] = functools.partial(
          lambda c: jax.block_until_ready(c(*args)), compiled)
  if _LATTICE.value:
    lattice = load_lattice()
    p_chw = np.ascontiguousarray(probs.transpose(0, 3, 1, 2)).ravel()
    i_chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).ravel()
    out = np.zeros_like(p_chw)

    def original():
      lattice.bilateralfilter_batch(i_chw, p_chw, out, b, 2, size, size, 15.0, 100.0)
      return -np.dot(p_chw, out) / b, -2.0 / b * out
    original()
    fns["original lattice"] = original
  print(f"batch {b} x {size}x{size} x 2, natural images, sigma_xy 100, sigma_rgb 15; "
        f"{bench_util.load()} at start")
  times = bench_util.interleave(fns, _ROUNDS.value)
  refs = [next(iter(fns))] + (["original lattice"] if "original lattice" in fns else [])
  print("| program | median ms | range ms | "
        + " | ".join(f"per-round ratio to {r}" for r in refs) + " |")
  print("|---" * (3 + len(refs)) + "|")
  for name, t in times.items():
    cols = []
    for ref in refs:
      r = bench_util.ratios(t, times[ref])
      cols.append(f"{bench_util.median(r):.2f} ({bench_util.spread(r)})")
    print(f"| {name} | {1e3 * bench_util.median(t):.0f} | "
          f"{bench_util.spread([1e3 * x for x in t], '{:.0f}')} | " + " | ".join(cols) + " |")
  print(f"{bench_util.load()} at end")


def mass():
  """The original lattice's loss and logit gradient relative to the exact sum, and for
  scale fcam_jax's grid at `--cells` on the same images."""
  lattice = load_lattice()
  size, cells = _SIZE.value, [float(c) for c in _CELLS.value]
  names, images, logits = natural_images.natural_set(size, _SEED.value)
  probs = natural_images.softmax(logits)
  grid = {cell: per_image_loss_and_logit_grad(crf, logits, images, grid_cell=cell)
          for cell in cells}
  print(f"{size}x{size}, sigma_xy 100, sigma_rgb 15; ratios to the exact sum: loss, and the "
        f"logit gradient's projection onto the exact one; cos: the logit gradient's cosine")
  print("| image | lattice loss ratio | lattice gradient ratio | lattice cos | "
        + " | ".join(f"grid@{c:g} loss ratio | grid@{c:g} cos" for c in cells) + " |")
  print("|---" * (4 + 2 * len(cells)) + "|")
  loss_r, grad_r, cos_l = [], [], []
  cos_g = {cell: [] for cell in cells}
  for n, (name, p, i) in enumerate(zip(names, probs, images)):
    ws = exact_filter(p, i, 100.0, 15.0)
    lws = lattice_filter(lattice, p[None].astype(np.float32), i[None].astype(np.float32))[0]
    g, gl = logit_grad(p, -2 * ws), logit_grad(p, -2 * lws.astype(np.float64))
    loss_r.append(np.sum(p * lws) / np.sum(p * ws))
    grad_r.append(np.sum(gl * g) / np.sum(g * g))
    cos_l.append(cosine(gl, g))
    row = f"| {name} | {loss_r[-1]:.3f} | {grad_r[-1]:.3f} | {cos_l[-1]:.4f} |"
    for cell in cells:
      losses, grads = grid[cell]
      cos_g[cell].append(cosine(grads[n], g))
      row += f" {losses[n] / -np.sum(p * ws):.4f} | {cos_g[cell][-1]:.4f} |"
    print(row, flush=True)
  for label, r in (("lattice loss", loss_r), ("lattice logit gradient", grad_r)):
    print(f"{label} ratio: median {np.median(r):.3f}, mean {np.mean(r):.3f}, "
          f"range {min(r):.3f}-{max(r):.3f}, 1 / median {1 / np.median(r):.2f}")
  print(f"worst logit-gradient cosine: lattice {min(cos_l):.4f}, " + ", ".join(
      f"grid@{c:g} {min(cos_g[c]):.4f}" for c in cells))


def main(argv):
  del argv
  {"accuracy": accuracy, "timing": timing, "mass": mass}[_MODE.value]()


if __name__ == "__main__":
  app.run(main)
