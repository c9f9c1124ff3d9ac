"""Dense CRF loss (Tang et al., 2018) with the exact Gaussian kernel (SPEC §6).

  CRF = -(1/B) sum_b sum_k S_bk^T W S_bk,
  W_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2))

over all pixel pairs of an image, i = j included; p in pixels, I the raw RGB in 0..255.
W is symmetric, so dL/dS_k = -(2/B) W S_k: one filtering pass gives the loss and its
gradient (a custom VJP). No gradient flows to the image.

W S is computed without a permutohedral lattice, by one of two methods:

* `grid`: a 5-D bilateral grid over f = ((x, y) / sigma_xy, (r, g, b) / sigma_rgb). Per axis,
  nodes span the range exactly (0..W-1, 0..H-1, 0..255) at a pitch h <= `grid_cell` (sigma
  units). Splat: each pixel adds its K values to its nearest node (one scatter row; the
  rounding errors of many pixels average out). Blur: separable, a dense node-to-node
  Gaussian per axis. Slice: trilinear in colour; in space, the blurred grid is first
  tent-interpolated to the centres of pixel tiles ~sigma_xy / 3 wide and each pixel reads
  its tile. Nearest splat, tent slice and tile lookup widen the kernel by h^2/12 + h^2/6
  (+ tile^2/12) per axis, so each blur Gaussian has the variance left, 1 minus that, and
  keeps the kernel's mass. The spatial operator (blur + tent to the tiles) is smooth: where
  its numerical rank is well below the node count (13 of 36 nodes at grid_cell 0.5,
  224x224), the colour blur runs on its leading singular modes instead of the nodes.
  Error against the exact sum, 224x224 synthetic image at the default sigmas: loss -0.08 % /
  -1.6 % / -1.1 % and gradient cosine 0.9994 / 0.998 / 0.997 at grid_cell 0.5 / 0.75 / 1.0
  (benchmarks/bench_crf.py has the sigma sweep). Work and memory grow as
  (H W / (h sigma_xy)^2) (255 / (h sigma_rgb))^3; benchmarks/README.md has the times
  (at 1.0 mostly the expansion to tiles and the slice gathers; at 0.5 the colour blur).
  The gradient is -(2/B) times this same approximate W S.
* `direct`: the exact sum over |dx|, |dy| <= 4 sigma_xy (the whole image if smaller), cost
  ~ H W (8 sigma_xy + 1)^2; for small sigma_xy, where the grid has too many nodes.

`method='auto'` takes the one with less estimated work for the shapes at hand. The grid
filters `batch_chunk` images at a time (a `lax.map` over chunks, the batch zero-padded to a
multiple): on a CPU a few images' grids stay in cache, 1.2-1.7x faster at batch 32 than the
whole batch's grid at once (benchmarks/bench_crf.py, `--chunks`); 0 filters the whole batch.
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
_TILE = 1 / 3  # grid: slice tile side, in sigma_xy (at most one node pitch)
_SPACE_RTOL = 1e-3  # grid: spatial modes kept, relative singular value


class _Plan(NamedTuple):
  method: str
  sigma_xy: float
  sigma_rgb: float
  cell: float
  chunk: int


def dense_crf_loss(probs, images, *, sigma_rgb: float = 15., sigma_xy: float = 100.,
                   scale: float = 1.0, grid_cell: float = 0.5, method: str = "auto",
                   batch_chunk: int = 4):
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
                     grid_cell: float = 0.5, method: str = "auto", batch_chunk: int = 4):
  """W v for values (B,H,W,K) and images (B,H,W,3): the filtering inside the loss."""
  plan = _plan(values.shape, sigma_xy, sigma_rgb, grid_cell, method, batch_chunk)
  return _filter(jnp.asarray(values, jnp.float32), jnp.asarray(images, jnp.float32), plan)


def _plan(shape, sigma_xy, sigma_rgb, grid_cell, method, batch_chunk=4) -> _Plan:
  if method not in METHODS:
    raise ValueError(f"method={method!r}: must be one of {', '.join(METHODS)}")
  if grid_cell <= 0:
    raise ValueError(f"grid_cell={grid_cell!r}: must be > 0")
  if batch_chunk < 0 or int(batch_chunk) != batch_chunk:
    raise ValueError(f"batch_chunk={batch_chunk!r}: must be an integer >= 0")
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
  Gaussian's mass; variances below 1/4 (grid_cell >~ 1.7) are clamped."""
  var = max(var, 0.25)
  d = (np.arange(n)[:, None] - np.arange(n)[None, :]) * pitch
  return np.exp(-0.5 * d * d / var) / np.sqrt(var)


def _tent(pos, n: int):
  """(len(pos), n) linear-interpolation weights of positions given in node units."""
  i0 = np.clip(np.floor(pos).astype(np.int64), 0, max(n - 2, 0))
  t = np.clip(pos - i0, 0.0, 1.0)
  m = np.zeros((len(pos), n))
  m[np.arange(len(pos)), i0] += 1 - t
  if n > 1:
    m[np.arange(len(pos)), i0 + 1] += t
  return m


class _GridConsts(NamedTuple):
  nc: int                  # colour nodes per axis
  colour_pitch: float      # in levels
  colour_blur: np.ndarray  # (nc, nc)
  nodes: int               # spatial nodes
  space_in: object         # None, or (modes, nodes): the spatial nodes' leading modes
  space: np.ndarray        # (tiles, nodes or modes): spatial blur + tent to the tile centres
  splat_space: np.ndarray  # (H, W) int32: the pixel's nearest spatial node, flat
  tile_index: np.ndarray   # (H, W) int32: the pixel's tile, flat


@functools.lru_cache(maxsize=64)
def _grid_consts(h: int, w: int, sigma_xy: float, sigma_rgb: float, cell: float):
  nc, pc = _nodes(255.0 / sigma_rgb, cell)
  space = []
  for size in (h, w):
    n, p = _nodes((size - 1) / sigma_xy, cell)
    tile = max(1, int(round(min(_TILE, p) * sigma_xy)))
    tiles = -(-size // tile)
    start = np.arange(tiles) * tile
    centre = (start + np.minimum(start + tile, size) - 1) / 2.0
    var = 1.0 - p * p / 4 - (tile * tile - 1) / 12.0 / sigma_xy ** 2
    blur = _tent(centre / sigma_xy / p, n) @ _gauss(n, p, var)
    nearest = np.clip(np.round(np.arange(size) / sigma_xy / p), 0, n - 1).astype(np.int64)
    space.append((tiles, tile, blur.astype(np.float32), nearest, np.arange(size) // tile))
  (_, _, space_y, near_y, tile_y), (tx, _, space_x, near_x, tile_x) = space
  space = np.kron(space_y, space_x)  # one matmul beats two skinny ones on XLA:CPU
  nodes, space_in = space.shape[1], None
  # The spatial operator is smooth, so of low numerical rank: when that rank is well
  # below the node count, the colour blur runs on its leading modes (2-norm error
  # < _SPACE_RTOL of the operator's).
  u, sv, vt = np.linalg.svd(space.astype(np.float64), full_matrices=False)
  rank = int(np.sum(sv > _SPACE_RTOL * sv[0]))
  if rank <= 0.75 * nodes:
    space_in = vt[:rank].astype(np.float32)
    space = (u[:, :rank] * sv[:rank]).astype(np.float32)
  return _GridConsts(
      nc=nc, colour_pitch=pc * sigma_rgb,
      colour_blur=_gauss(nc, pc, 1.0 - pc * pc / 4).astype(np.float32),
      nodes=nodes, space_in=space_in, space=space,
      splat_space=(near_y[:, None] * space_x.shape[1] + near_x[None, :]).astype(np.int32),
      tile_index=(tile_y[:, None] * tx + tile_x[None, :]).astype(np.int32))


def _matmul_axis1(m, x):
  """m (P, Q) applied to axis 1 of x (A, Q, N) -> (A, P, N), as a batched matmul.

  The grid stays row-major: a plain einsum over a middle axis makes XLA:CPU first copy
  the whole grid into another layout.
  """
  m = jnp.broadcast_to(jnp.asarray(m), (x.shape[0],) + m.shape)
  return lax.dot_general(m, x, (((2,), (1,)), ((0,), (0,))))


def _grid_filter(s, images, c: _GridConsts):
  """W s for a batch: s (B,H,W,K), images (B,H,W,3) -> (B,H,W,K).

  Grid layout (y, x, r, g, b, batch, K), row-major: each blur is a matmul over one axis
  with batch and channels innermost; splat and slice move rows of K values.
  """
  tiles, _ = c.space.shape
  if tiles * c.nc ** 3 * s.shape[0] >= 2 ** 31:
    raise ValueError(f"the bilateral grid has too many nodes for int32 indices "
                     f"({tiles * c.nc ** 3 * s.shape[0]} rows): raise grid_cell")
  return _slice(_expand(_blur_colour(_to_modes(_splat(s, images, c), c), c), c), images, c)


def _colour_pos(images, c: _GridConsts):
  return jnp.clip(images, 0.0, 255.0) / c.colour_pitch  # colour in node units


def _splat(s, images, c: _GridConsts):
  """Each pixel's K values added to its nearest node in all five dims: (rows, K)."""
  bsz, _, _, k = s.shape
  nc, nodes = c.nc, c.nodes
  near = jnp.round(_colour_pos(images, c)).astype(jnp.int32)
  colour = (near[..., 0] * nc + near[..., 1]) * nc + near[..., 2]
  batch = np.arange(bsz, dtype=np.int32)[:, None, None]
  index = ((c.splat_space * nc ** 3 + colour) * bsz + batch).reshape(-1)
  grid = jnp.zeros((nodes * nc ** 3 * bsz, k), jnp.float32)
  return grid.at[index].add(s.reshape(-1, k), mode="promise_in_bounds")


def _to_modes(grid, c: _GridConsts):
  """The spatial nodes' grids -> the leading modes' (when there are few): (modes, ...)."""
  if c.space_in is None:
    return grid
  return jnp.asarray(c.space_in) @ grid.reshape(c.nodes, -1)


def _blur_colour(grid, c: _GridConsts):
  nc, nodes = c.nc, c.space.shape[1]
  grid = _matmul_axis1(c.colour_blur, grid.reshape(nodes, nc, -1))
  grid = _matmul_axis1(c.colour_blur, grid.reshape(nodes * nc, nc, -1))
  return _matmul_axis1(c.colour_blur, grid.reshape(nodes * nc * nc, nc, -1))


def _expand(grid, c: _GridConsts):
  """Blur space and interpolate it to the tiles: (tiles, nc^3 * B * K)."""
  return jnp.asarray(c.space) @ grid.reshape(c.space.shape[1], -1)


def _slice(grid, images, c: _GridConsts):
  """The pixel's tile, trilinear in colour: (B,H,W,K) from the tiles' grid."""
  bsz, h, w, _ = images.shape
  nc = c.nc
  k = grid.shape[1] // (nc ** 3 * bsz)
  grid = grid.reshape(-1, k)
  pos = _colour_pos(images, c)
  low = jnp.clip(jnp.floor(pos), 0, nc - 2)
  frac = pos - low
  low = low.astype(jnp.int32)
  colour = (low[..., 0] * nc + low[..., 1]) * nc + low[..., 2]
  base = (c.tile_index * nc ** 3 + colour) * bsz + np.arange(bsz, dtype=np.int32)[:, None, None]
  out = jnp.zeros((bsz, h, w, k), jnp.float32)
  for corner in itertools.product((0, 1), repeat=3):
    weight = jnp.prod(jnp.where(np.asarray(corner, bool), frac, 1.0 - frac), axis=-1)
    offset = ((corner[0] * nc + corner[1]) * nc + corner[2]) * bsz
    out = out + weight[..., None] * grid.at[base + offset].get(mode="promise_in_bounds")
  return out


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
    return acc + jnp.einsum("hwd,hwdk->hwk", wgt, s_rows), None

  out, _ = lax.scan(row, jnp.zeros(s.shape, jnp.float32), jnp.arange(-ry, ry + 1))
  return out


def _auto_method(h: int, w: int, sigma_xy: float, sigma_rgb: float, cell: float) -> str:
  """The method with less estimated work per image and channel (gathers and scatters
  counted ~20 flops)."""
  c = _grid_consts(h, w, sigma_xy, sigma_rgb, cell)
  tiles, nodes = c.space.shape
  grid = (3 * c.nc + tiles) * nodes * c.nc ** 3 + 200 * h * w
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
