"""Dense CRF loss (Tang et al., 2018) with the exact Gaussian kernel (docs/design.md §6).

  CRF = -(1/B) sum_b sum_k S_bk^T W S_bk,
  W_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))

over all pixel pairs of an image, i = j included; p in pixels, I the raw RGB in 0..255.
W is symmetric, so dL/dS_k = -(2/B) W S_k: one filtering pass gives the loss and its
gradient (a custom VJP). No gradient flows to the image.

W S is computed without a permutohedral lattice, by one of two methods:

* `grid`: W = (spatial kernel) x (colour kernel), elementwise. Space: the spatial kernel
  on the pixel grid is exp(-dy^2/2s^2) exp(-dx^2/2s^2), smooth and of low rank, so it is
  replaced by its leading eigenpairs, U U^T with U (H W, M) (products of the two axes'
  eigenvectors, kept to a relative eigenvalue of 4e-3 grid_cell^2: M = 13 at 224x224,
  sigma_xy 100, grid_cell 0.5), applied per pixel: no spatial nodes. Colour: a 3-D grid over
  (r, g, b) / sigma_rgb with nodes spanning 0..255 at a pitch h <= `grid_cell`. Each pixel
  adds its K values times its M mode weights to one colour node, the lower or upper one
  per axis with the tent weights as probabilities (ordered dithering, four stratified
  rows per pixel: a trilinear splat on average, for the price of a nearest one); the grid
  is blurred by a node-to-node Gaussian per axis and read back trilinearly, then the M
  values are summed with the pixel's mode weights. The splat and slice widen the
  Gaussian and make the kernel's value at (i, i) depend on where the pixel's colour sits
  between nodes, which on flat or saturated regions (every pixel at the same offset)
  scales the whole region; so the colour kernel is divided by sqrt(d_i d_j), d its
  value at (i, i), which makes W_ii = 1 as in the exact kernel and keeps W symmetric, and
  the blur's variance is the one for which d is 1 on average (mass kept). The error
  left, measured against the exact float64 sum on natural-looking images in
  benchmarks/README.md ("Dense CRF loss"), comes from the linear interpolation between
  colour nodes and the dithering's noise; it grows with grid_cell. The dithered W is
  symmetric only on average, so the VJP -(2/B) W S differs from the gradient of the
  grid's own loss by a few percent of noise (not in scale). Work: about
  M (H W (4 scatter rows + 8 gathers) + 3 nc^4), nc = 255 / (h sigma_rgb) + 1.
* `direct`: the exact sum over |dx|, |dy| <= 4 sigma_xy (the whole image if smaller), cost
  ~ H W (8 sigma_xy + 1)^2; for small sigma_xy, where the grid has too many modes.

`method='auto'` takes the one with less estimated work for the shapes at hand. The grid
filters `batch_chunk` images at a time (a `lax.map` over chunks, the batch zero-padded to
a multiple); -1 (the default) takes `default_batch_chunk(jax.default_backend())`: 4 on a
CPU, where a few images' grids stay in cache, the whole batch (0) on a GPU or TPU, where
a serial loop would only leave the device idle.

Precision: the matrix products (colour blur, direct sum) run at HIGHEST, so that a GPU
(TF32) or TPU (one bf16 pass) computes them in full fp32 like the CPU the errors were
measured on. Determinism: on a CPU the splat's scatter-add runs in a fixed order, so the
loss and gradient are bit-identical from run to run for the same inputs, shapes,
batch_chunk and XLA version; on a GPU, XLA lowers the scatter-add to float atomics whose
order varies, so results can differ from run to run in the last bits. The dither
thresholds depend only on the pixel position: the approximation itself is the same
everywhere. batch_chunk and the batch size change the summation order on any backend.
"""

import functools
import itertools
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

METHODS = ("auto", "grid", "direct")
_WINDOW_SIGMAS = 4.0  # direct: spatial truncation radius, in sigma_xy
_SPACE_RTOL = 4e-3  # grid: spatial modes kept, relative eigenvalue, times grid_cell^2
_DITHER_ROWS = 4  # grid: colour nodes each pixel is splatted to (stratified thresholds)
_PRECISION = lax.Precision.HIGHEST  # the CRF's matrix products (see the module docstring)


class _Plan(NamedTuple):
  method: str
  sigma_xy: float
  sigma_rgb: float
  cell: float
  chunk: int


def dense_crf_loss(probs, images, *, sigma_rgb: float = 15., sigma_xy: float = 100.,
                   scale: float = 1.0, grid_cell: float = 0.5, method: str = "auto",
                   batch_chunk: int = -1):
  """-(1/B) sum_b sum_k S_bk^T W S_bk for probs (B,H,W,K) and raw images (B,H,W,3) in 0..255.

  `scale` in (0, 1], as Tang's DenseCRFLoss: the image is resized by `scale` with torch's
  `F.interpolate` nearest rule (source pixel floor(i / scale)), probs bilinearly with
  half-pixel centres (align_corners=False), to floor(side * scale), and sigma_xy is
  multiplied by `scale`. The gradient w.r.t. probs flows through that resize.
  """
  if not 0.0 < scale <= 1.0:
    raise ValueError(f"scale={scale!r}: must be in (0, 1]")
  if probs.shape[:3] != images.shape[:3] or images.shape[3] != 3:
    raise ValueError(f"probs {probs.shape} and images {images.shape}: want (B,H,W,K), (B,H,W,3)")
  images = lax.stop_gradient(jnp.asarray(images, jnp.float32))
  if scale != 1.0:
    images = _resize_nearest(images, scale)
    probs = _resize_bilinear(probs, scale)
    sigma_xy = sigma_xy * scale
  return _crf_loss(probs, images,
                   _plan(probs.shape, sigma_xy, sigma_rgb, grid_cell, method, batch_chunk))


def bilateral_filter(values, images, *, sigma_rgb: float = 15., sigma_xy: float = 100.,
                     grid_cell: float = 0.5, method: str = "auto", batch_chunk: int = -1):
  """W v for values (B,H,W,K) and images (B,H,W,3): the filtering inside the loss."""
  plan = _plan(values.shape, sigma_xy, sigma_rgb, grid_cell, method, batch_chunk)
  return _filter(jnp.asarray(values, jnp.float32), jnp.asarray(images, jnp.float32), plan)


def default_batch_chunk(backend: str) -> int:
  """Images per grid pass for `batch_chunk=-1` on `backend` ('cpu', 'gpu', 'tpu', ...):
  4 on a CPU (the grids stay in cache), 0 (the whole batch at once) elsewhere."""
  return 4 if backend == "cpu" else 0


def _plan(shape, sigma_xy, sigma_rgb, grid_cell, method, batch_chunk=-1) -> _Plan:
  if method not in METHODS:
    raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
  if grid_cell <= 0:
    raise ValueError(f"grid_cell={grid_cell!r}: must be > 0")
  if batch_chunk < -1 or int(batch_chunk) != batch_chunk:
    raise ValueError(f"batch_chunk={batch_chunk!r}: must be an integer >= 0, or -1")
  if batch_chunk == -1:
    batch_chunk = default_batch_chunk(jax.default_backend())
  _, h, w, _ = shape
  sigma_xy, sigma_rgb, grid_cell = float(sigma_xy), float(sigma_rgb), float(grid_cell)
  if method == "auto":
    method = _auto_method(h, w, sigma_xy, sigma_rgb, grid_cell)
  return _Plan(method, sigma_xy, sigma_rgb, grid_cell, int(batch_chunk))


# ---------------------------------------------------------------------------- the loss


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _crf_loss(probs, images, plan):
  return _crf_loss_fwd(probs, images, plan)[0]


def _crf_loss_fwd(probs, images, plan):
  s = probs.astype(jnp.float32)
  ws = _filter(s, images, plan)
  loss = -jnp.sum(s * ws) / probs.shape[0]
  return loss, (ws.astype(probs.dtype), images)


def _crf_loss_bwd(plan, residuals, g):
  del plan
  ws, images = residuals
  return (-2.0 / ws.shape[0]) * g.astype(ws.dtype) * ws, jnp.zeros_like(images)


_crf_loss.defvjp(_crf_loss_fwd, _crf_loss_bwd)


def _filter(s, images, plan: _Plan):
  if plan.method == "grid":
    consts = _grid_consts(s.shape[1], s.shape[2], plan.sigma_xy, plan.sigma_rgb, plan.cell)
    return _in_chunks(functools.partial(_grid_filter, c=consts), s, images, plan.chunk)
  direct = functools.partial(_direct_filter, sigma_xy=plan.sigma_xy, sigma_rgb=plan.sigma_rgb)
  return lax.map(lambda args: direct(*args), (s, images))  # one image at a time: memory


def _in_chunks(fn, s, images, chunk: int):
  """fn over `chunk` images at a time (sequentially: lax.map), the batch zero-padded."""
  bsz = s.shape[0]
  if chunk <= 0 or chunk >= bsz:
    return fn(s, images)
  steps = -(-bsz // chunk)
  pad = [(0, steps * chunk - bsz)] + [(0, 0)] * 3
  split = lambda x: jnp.pad(x, pad).reshape((steps, chunk) + x.shape[1:])
  out = lax.map(lambda args: fn(*args), (split(s), split(images)))
  return out.reshape((steps * chunk,) + out.shape[2:])[:bsz]


# ------------------------------------------------------------------------ the grid


def _nodes(span: float, cell: float):
  """(count, pitch): nodes 0, pitch, ..., span with pitch <= cell."""
  n = max(math.ceil(span / cell - 1e-9), 1) + 1
  return n, (span / (n - 1) if span > 0 else cell)


def _gauss(n: int, pitch: float, var: float):
  """Node-to-node Gaussian of variance `var` (sigma units), scaled to keep the unit
  Gaussian's mass."""
  d = (np.arange(n)[:, None] - np.arange(n)[None, :]) * pitch
  return np.exp(-0.5 * d * d / var) / np.sqrt(var)


def _blur_variance(pitch: float) -> float:
  """The colour blur's variance (sigma units) for which the self-kernel d(f) (see
  `_self_norm`) averages 1 over the offset f: (2 b0 + b1) / 3 = 1. It is close to
  1 - pitch^2 / 3, what a tent splat and slice leave of the unit variance."""
  lo, hi = 0.05, 1.0
  for _ in range(60):
    var = 0.5 * (lo + hi)
    b0, b1 = _gauss(2, pitch, var)[0]
    lo, hi = (var, hi) if (2 * b0 + b1) / 3 > 1 else (lo, var)
  return var


@functools.lru_cache(maxsize=64)
def _axis_eigen(size: int, sigma_xy: float):
  """Eigenvalues (descending, >= 0) and eigenvectors of the 1-D spatial kernel."""
  x = np.arange(size) / sigma_xy
  val, vec = np.linalg.eigh(np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2))
  return np.maximum(val[::-1], 0.0), vec[:, ::-1]


def _mode_pairs(h: int, w: int, sigma_xy: float, cell: float):
  """The (y, x) eigenpair indices kept, largest product eigenvalue first."""
  (vy, _), (vx, _) = _axis_eigen(h, sigma_xy), _axis_eigen(w, sigma_xy)
  prod = vy[:, None] * vx[None, :]
  ia, ib = np.nonzero(prod > _SPACE_RTOL * cell ** 2 * prod[0, 0])
  order = np.argsort(-prod[ia, ib], kind="stable")
  return ia[order], ib[order]


def _space_modes(h: int, w: int, sigma_xy: float, cell: float):
  """(H*W, M) U with U U^T ~ the spatial kernel on the pixel grid (y-major)."""
  (vy, uy), (vx, ux) = _axis_eigen(h, sigma_xy), _axis_eigen(w, sigma_xy)
  ia, ib = _mode_pairs(h, w, sigma_xy, cell)
  modes = (uy[:, None, ia] * ux[None, :, ib]) * np.sqrt(vy[ia] * vx[ib])
  return modes.reshape(h * w, len(ia))


def _dither(h: int, w: int):
  """(H*W, 3) thresholds in [0, 1): the R_3 low-discrepancy sequence over the pixels, so
  that pixels near each other sample the unit cube evenly."""
  phi = 1.2207440846057596  # the root of x^4 = x + 1
  alpha = phi ** -np.arange(1, 4)
  return (0.5 + np.arange(1, h * w + 1)[:, None] * alpha[None, :]) % 1.0


class _GridConsts(NamedTuple):
  nc: int                  # colour nodes per axis
  colour_pitch: float      # in levels
  colour_blur: np.ndarray  # (nc, nc)
  self_weights: tuple      # (b0, b1): colour_blur at node offsets 0 and 1
  modes: np.ndarray        # (H*W, M): the spatial kernel ~= modes @ modes.T
  dither: np.ndarray       # (H*W, 3) splat thresholds


@functools.lru_cache(maxsize=64)
def _grid_consts(h: int, w: int, sigma_xy: float, sigma_rgb: float, cell: float):
  nc, pc = _nodes(255.0 / sigma_rgb, cell)
  blur = _gauss(nc, pc, _blur_variance(pc))
  return _GridConsts(
      nc=nc, colour_pitch=pc * sigma_rgb, colour_blur=blur.astype(np.float32),
      self_weights=(float(blur[0, 0]), float(blur[0, 1])),
      modes=_space_modes(h, w, sigma_xy, cell).astype(np.float32),
      dither=_dither(h, w).astype(np.float32))


def _grid_filter(s, images, c: _GridConsts):
  """W s for a batch: s (B,H,W,K), images (B,H,W,3) -> (B,H,W,K).

  Grid layout (r, g, b, batch, K, mode), row-major: the colour blur is a matmul over one
  colour axis at a time; splat and slice move rows of K M values.
  """
  bsz, _, _, k = s.shape
  if c.nc ** 3 * bsz >= 2 ** 31:
    raise ValueError(f"the bilateral grid has too many nodes for int32 indices "
                     f"({c.nc ** 3 * bsz} rows): raise grid_cell")
  low, frac = _colour_cell(images, c)
  norm = _self_norm(frac, c)[..., None]
  grid = _blur_colour(_splat(s * norm, low, frac, c), c)
  return _slice(grid.reshape(c.nc ** 3 * bsz, -1), low, frac, c) * norm


def _colour_cell(images, c: _GridConsts):
  """The pixel's lower colour node (B,H,W,3) int32 and its offset from it in [0, 1]."""
  pos = jnp.clip(images, 0.0, 255.0) / c.colour_pitch
  low = jnp.clip(jnp.floor(pos), 0, c.nc - 2)
  return low.astype(jnp.int32), pos - low


def _self_norm(frac, c: _GridConsts):
  """1 / sqrt(d), d the colour kernel's value at (pixel, same pixel): (B,H,W).

  Per axis, a tent splat and slice give b0 (1 - f)^2 + b0 f^2 + 2 b1 f (1 - f).
  """
  b0, b1 = c.self_weights
  return lax.rsqrt(jnp.prod(b0 - 2 * (b0 - b1) * frac * (1 - frac), axis=-1))


def _colour_row(node, c: _GridConsts, bsz: int):
  batch = np.arange(bsz, dtype=np.int32)[:, None, None]
  return ((node[..., 0] * c.nc + node[..., 1]) * c.nc + node[..., 2]) * bsz + batch


def _splat(s, low, frac, c: _GridConsts):
  """Each pixel's K values times its M mode weights, added to colour nodes: (rows, K M).

  _DITHER_ROWS rows per pixel, each of weight 1 / rows at the lower or upper node per
  axis: upper where the offset exceeds a threshold, the pixel's `c.dither` shifted by
  j / rows for row j (stratified). On average over the thresholds, a trilinear splat.
  """
  bsz, h, w, k = s.shape
  modes = c.modes.shape[1]
  rows = s.reshape(bsz, h * w, k, 1) * jnp.asarray(c.modes)[None, :, None, :]
  rows = rows.reshape(-1, k * modes) / _DITHER_ROWS
  u = jnp.asarray(c.dither).reshape(h, w, 3)
  grid = jnp.zeros((c.nc ** 3 * bsz, k * modes), jnp.float32)
  for j in range(_DITHER_ROWS):  # one scatter per row: a concatenated one copies the rows
    node = low + (frac > (u + j / _DITHER_ROWS) % 1.0).astype(jnp.int32)
    grid = grid.at[_colour_row(node, c, bsz).reshape(-1)].add(rows, mode="promise_in_bounds")
  return grid


def _blur_axis1(m, x):
  """m (P, Q) applied to axis 1 of x (A, Q, N) -> (A, P, N), as a batched matmul.

  The grid stays row-major: a plain einsum over a middle axis makes XLA:CPU first copy
  the whole grid into another layout.
  """
  m = jnp.broadcast_to(jnp.asarray(m), (x.shape[0],) + m.shape)
  return lax.dot_general(m, x, (((2,), (1,)), ((0,), (0,))), precision=_PRECISION)


def _blur_colour(grid, c: _GridConsts):
  """The node-to-node Gaussian along r, g and b of the grid (nc^3 batch, K M)."""
  nc = c.nc
  width = grid.size // nc ** 3  # batch x K x M per colour node
  grid = _blur_axis1(c.colour_blur, grid.reshape(1, nc, nc * nc * width))
  grid = _blur_axis1(c.colour_blur, grid.reshape(nc, nc, nc * width))
  grid = _blur_axis1(c.colour_blur, grid.reshape(nc * nc, nc, width))
  return grid


def _slice(grid, low, frac, c: _GridConsts):
  """Trilinear in colour, then summed with the pixel's mode weights: (B,H,W,K)."""
  bsz, h, w, _ = low.shape
  modes = c.modes.shape[1]
  k = grid.shape[1] // modes
  base = _colour_row(low, c, bsz).reshape(bsz, h * w)
  frac = frac.reshape(bsz, h * w, 3)
  acc = 0.0
  for corner in itertools.product((0, 1), repeat=3):
    weight = jnp.prod(jnp.where(np.asarray(corner, bool), frac, 1.0 - frac), axis=-1)
    offset = ((corner[0] * c.nc + corner[1]) * c.nc + corner[2]) * bsz
    acc = acc + weight[..., None] * grid.at[base + offset].get(mode="promise_in_bounds")
  acc = acc.reshape(bsz, h * w, k, modes)
  u = jnp.asarray(c.modes)
  out = 0.0
  for m in range(modes):  # unrolled: XLA:CPU runs the einsum as H W tiny matmuls
    out = out + acc[:, :, :, m] * u[None, :, m, None]
  return out.reshape(bsz, h, w, k)


# ---------------------------------------------------------------- direct (windowed)


def _window(size: int, sigma_xy: float) -> int:
  return int(min(math.ceil(_WINDOW_SIGMAS * sigma_xy), size - 1))


def _direct_filter(s, image, sigma_xy: float, sigma_rgb: float):
  """Exact W s for one image (H,W,K) over |dy|, |dx| <= 4 sigma_xy: scan over dy."""
  h, w, _ = s.shape
  ry, rx = _window(h, sigma_xy), _window(w, sigma_xy)
  s_pad = jnp.pad(s, ((ry, ry), (rx, rx), (0, 0)))  # pixels outside carry s = 0
  i_pad = jnp.pad(image, ((ry, ry), (rx, rx), (0, 0)))
  dx = np.arange(-rx, rx + 1)
  cols = np.arange(w)[:, None] + rx + dx[None, :]  # (W, 2rx+1) columns of the padded row
  inv_xy, inv_rgb = 0.5 / sigma_xy ** 2, 0.5 / sigma_rgb ** 2
  w_dx = np.exp(-inv_xy * dx * dx).astype(np.float32)

  def row(acc, dy):
    s_rows = lax.dynamic_slice_in_dim(s_pad, dy + ry, h, axis=0)[:, cols]  # (H,W,D,K)
    i_rows = lax.dynamic_slice_in_dim(i_pad, dy + ry, h, axis=0)[:, cols]  # (H,W,D,3)
    d2 = jnp.sum(jnp.square(i_rows - image[:, :, None, :]), axis=-1)
    wgt = jnp.exp(-inv_rgb * d2 - inv_xy * (dy * dy).astype(jnp.float32)) * w_dx
    return acc + jnp.einsum("hwd,hwdk->hwk", wgt, s_rows, precision=_PRECISION), None

  out, _ = lax.scan(row, jnp.zeros(s.shape, jnp.float32), jnp.arange(-ry, ry + 1))
  return out


def _auto_method(h: int, w: int, sigma_xy: float, sigma_rgb: float, cell: float) -> str:
  """The method with less estimated work per image and channel (gathers and scatters
  counted ~20 flops)."""
  nc, _ = _nodes(255.0 / sigma_rgb, cell)
  modes = len(_mode_pairs(h, w, sigma_xy, cell)[0])
  grid = modes * (3 * nc ** 4 + 200 * h * w)
  direct = 8 * h * w * (2 * _window(h, sigma_xy) + 1) * (2 * _window(w, sigma_xy) + 1)
  return "grid" if grid <= direct else "direct"


# -------------------------------------------------------------- resizing (scale < 1)


def _resize_nearest(x, scale: float):
  """torch F.interpolate(scale_factor=scale, mode='nearest') on (B,H,W,C)."""
  _, h, w, _ = x.shape
  iy = np.minimum(np.floor(np.arange(int(h * scale)) / scale), h - 1).astype(np.int32)
  ix = np.minimum(np.floor(np.arange(int(w * scale)) / scale), w - 1).astype(np.int32)
  return x[:, iy][:, :, ix]


def _bilinear_matrix(size: int, scale: float):
  """(out, in) weights of torch bilinear with align_corners=False, given scale_factor."""
  src = np.maximum((np.arange(int(size * scale)) + 0.5) / scale - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
  i1 = np.minimum(i0 + 1, size - 1)
  t = src - i0
  m = np.zeros((len(src), size))
  np.add.at(m, (np.arange(len(src)), i0), 1 - t)
  np.add.at(m, (np.arange(len(src)), i1), t)
  return m.astype(np.float32)


def _resize_bilinear(x, scale: float):
  _, h, w, _ = x.shape
  return jnp.einsum("Hh,Ww,bhwk->bHWk", _bilinear_matrix(h, scale),
                    _bilinear_matrix(w, scale), x.astype(jnp.float32))
