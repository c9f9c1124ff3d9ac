"""F-CAM stage 2 in PyTorch eager (docs/design.md §2-§6): the reference of bench_stage2_vs_torch.py.

Needs torch and torchvision (the optional `torch` extra). What a PyTorch user would
write with torchvision, at eager PyTorch's best on a CPU: channels-last activations,
the frozen classifier under `torch.inference_mode`, `torch.set_num_threads(cores)`
(set by the caller), the whole batch at once (no per-image Python loops).

* `classifier`: torchvision `resnet50` made the WSOL variant (docs/design.md §2: layer3 and
  layer4 at stride 1, on conv2 and on the projection shortcut; no avgpool/fc) with the
  WGAP head (docs/design.md §3); returns (logits, [stem, layer1, layer2, layer3, layer4]).
* `Decoder`: the U-Net decoder of docs/design.md §5 (module names follow fcam_jax's, so weights
  map one to one).
* `cam_star`, `seed_regions`, `sample_seeds`, `partial_cross_entropy`: docs/design.md §4, §6.
* `GridCRF`: the dense CRF loss of docs/design.md §6. The original filters with a C++
  permutohedral lattice (not available here); this is the same grid as
  fcam_jax.losses.crf (per-pixel spatial eigenmodes, dithered colour splat, separable
  node-to-node Gaussian colour blur, trilinear slice, self-kernel normalisation, `chunk`
  images at a time): the grid's constant matrices are fcam_jax's, the splat, blurs and
  slice are written in torch, with the loss's gradient `-(2/B) W S` from one filtering
  pass (a custom autograd Function). `ExactCRF` is the
  other way a PyTorch user would go: the exact kernel as a dense N x N matrix, on images
  downscaled by `scale` as in Tang's DenseCRFLoss (cost ~ (scale^2 H W)^2).
* `elb`, `size_loss`: the extended log-barrier size constraint.
* `Stage2`: one SGD step of the decoder. `encoder_passes=2` is what the original
  does (the CAM from one classifier pass, the decoder's features from another);
  `encoder_passes=1` reuses the CAM pass's features (what fcam_jax does).
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
import torchvision

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FOREGROUND, BACKGROUND, IGNORE = 1, 0, -1


# ---------------------------------------------------------------- models (docs/design.md §2, §3, §5)


class Classifier(nn.Module):
  """ResNet50-WSOL + WGAP head: x (B,3,H,W) -> (logits, taps shallow -> deep)."""

  def __init__(self, num_classes: int):
    super().__init__()
    m = torchvision.models.resnet50(weights=None)
    for layer in (m.layer3, m.layer4):
      layer[0].conv2.stride = (1, 1)
      layer[0].downsample[0].stride = (1, 1)
    self.conv1, self.bn1, self.relu, self.maxpool = m.conv1, m.bn1, m.relu, m.maxpool
    self.layer1, self.layer2, self.layer3, self.layer4 = m.layer1, m.layer2, m.layer3, m.layer4
    self.fc = nn.Linear(2048, num_classes)
    nn.init.xavier_uniform_(self.fc.weight)
    nn.init.zeros_(self.fc.bias)

  def forward(self, x):
    stem = self.relu(self.bn1(self.conv1(x)))
    l1 = self.layer1(self.maxpool(stem))
    l2 = self.layer2(l1)
    l3 = self.layer3(l2)
    l4 = self.layer4(l3)
    return self.fc(l4.mean((2, 3))), [stem, l1, l2, l3, l4]


class ConvBNReLU(nn.Sequential):

  def __init__(self, cin: int, cout: int):
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, mode="fan_in", nonlinearity="relu")
    super().__init__()
    self.conv, self.bn, self.relu = conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)


class DecoderBlock(nn.Module):

  def __init__(self, cin: int, cskip: int, cout: int):
    super().__init__()
    self.conv1 = ConvBNReLU(cin + cskip, cout)
    self.conv2 = ConvBNReLU(cout, cout)

  def forward(self, x, skip=None):
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    if skip is not None:
      if x.shape[2:] != skip.shape[2:]:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)
      x = torch.cat([x, skip], 1)
    return self.conv2(self.conv1(x))


class Decoder(nn.Module):
  """docs/design.md §5 U-Net decoder: taps (shallow -> deep) -> (B, 2, H, W) logits."""

  def __init__(self, tap_channels=(64, 256, 512, 1024, 2048), channels=(256, 128, 64, 32, 16)):
    super().__init__()
    skips = list(tap_channels[-2::-1])
    cin = tap_channels[-1]
    blocks = []
    for i, cout in enumerate(channels):
      blocks.append(DecoderBlock(cin, skips[i] if i < len(skips) else 0, cout))
      cin = cout
    self.blocks = nn.ModuleList(blocks)
    self.head = nn.Conv2d(cin, 2, 3, padding=1)
    nn.init.xavier_uniform_(self.head.weight)
    nn.init.zeros_(self.head.bias)

  def forward(self, taps, out_size):
    x, skips = taps[-1], taps[-2::-1]
    for i, block in enumerate(self.blocks):
      x = block(x, skips[i] if i < len(skips) else None)
    x = self.head(x)
    if tuple(x.shape[2:]) != tuple(out_size):
      x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=True)
    return x


def normalize(raw):
  """uint8 NHWC -> ImageNet-normalized NCHW in channels-last memory (a permuted view)."""
  mean = torch.tensor(MEAN).view(1, 1, 1, 3) * 255
  std = torch.tensor(STD).view(1, 1, 1, 3) * 255
  return ((raw.float() - mean) / std).permute(0, 3, 1, 2)


# ------------------------------------------------------------------- CAM and seeds (§4, §6)


def cam_star(classifier: Classifier, layer4, labels, size):
  """CAM* of each image's label (no ReLU), min-max normalized, bilinear to `size`."""
  w = classifier.fc.weight[labels]  # (B, C)
  cam = torch.einsum("bchw,bc->bhw", layer4, w)
  lo = cam.amin((1, 2), keepdim=True)
  span = cam.amax((1, 2), keepdim=True) - lo
  cam = torch.where(span > 0, (cam - lo) / torch.where(span > 0, span, 1.0), 0.0)
  return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def _otsu(q):
  """Otsu level per image of q (B, N) int64 in 0..255 (the first of equal maxima)."""
  b = q.shape[0]
  hist = torch.zeros(b, 256, dtype=torch.int64).scatter_add_(1, q, torch.ones_like(q))
  w1 = hist.cumsum(1)
  s1 = (hist * torch.arange(256)).cumsum(1)
  n, total = w1[:, -1:], s1[:, -1:]
  w2 = n - w1
  num = n.double() * s1.double() - total.double() * w1.double()
  valid = (w1 > 0) & (w2 > 0)
  den = torch.where(valid, w1.double() * w2.double(), 1.0)
  return torch.where(valid, num * num / den, -1.0).argmax(1)


def seed_regions(cams, n_minus: float = 0.1, erosion: int = 11):
  """(foreground, background) sampling regions (B,H,W) bool of CAMs (B,H,W) in [0,1]."""
  b, h, w = cams.shape
  q = (cams.clamp(0, 1) * 255).to(torch.int64)
  flat = q.view(b, -1)
  nonconstant = (flat.amin(1) < flat.amax(1)).view(b, 1, 1)
  fg = q > _otsu(flat).clamp(1, 254).view(b, 1, 1)
  if erosion > 1:  # max-pool pads with -inf: outside pixels never erode
    eroded = -F.max_pool2d(-fg[:, None].float(), erosion, 1, erosion // 2)[:, 0] > 0
    fg = torch.where(eroded.flatten(1).any(1).view(b, 1, 1), eroded, fg)
  count = int(n_minus * h * w)
  order = torch.sort(cams.reshape(b, -1), dim=1, stable=True).indices[:, :count]
  bg = torch.zeros(b, h * w, dtype=torch.bool).scatter_(1, order, True).view(b, h, w)
  return fg & nonconstant, bg & nonconstant


def _sample(region, count: int, generator):
  b = region.shape[0]
  score = torch.where(region.view(b, -1), torch.rand(region.view(b, -1).shape,
                                                      generator=generator), -1.0)
  values, index = score.topk(count, dim=1)
  picked = torch.zeros_like(score, dtype=torch.bool).scatter_(1, index, values >= 0)
  return picked.view(region.shape)


def _dilate(mask, size: int):
  return F.max_pool2d(mask[:, None].float(), size, 1, size // 2)[:, 0] > 0


def sample_seeds(cams, generator, n_minus=0.1, sl_max=1, sl_min=1, erosion=11, dilation=3):
  """Seeds (B,H,W) int64 in {FOREGROUND, BACKGROUND, IGNORE}."""
  fg, bg = seed_regions(cams, n_minus, erosion)
  fg = _dilate(_sample(fg, sl_max, generator), dilation)
  bg = _dilate(_sample(bg, sl_min, generator), dilation)
  seeds = torch.full(fg.shape, IGNORE, dtype=torch.int64)
  seeds[fg & ~bg] = FOREGROUND
  seeds[bg & ~fg] = BACKGROUND
  return seeds


def partial_cross_entropy(logits, seeds):
  """Mean CE over the labelled pixels of the batch (0 if none); logits (B,2,H,W)."""
  total = F.cross_entropy(logits, seeds, ignore_index=IGNORE, reduction="sum")
  return total / (seeds >= 0).sum().clamp(min=1)


# ----------------------------------------------------------------------- size (ELB, §6)


def elb(z, t: float):
  switch = -1.0 / (t * t)
  barrier = z <= switch
  log_term = -torch.log(-torch.where(barrier, z, torch.full_like(z, switch))) / t
  linear = t * z - math.log(1.0 / (t * t)) / t + 1.0 / t
  return torch.where(barrier, log_term, linear)


def size_loss(probs, t: float):
  """probs (B,2,H,W): 0.5 (mean ELB(-sum S_bg) + mean ELB(-sum S_fg))."""
  area = probs.sum((2, 3))
  return 0.5 * (elb(-area[:, 0], t).mean() + elb(-area[:, 1], t).mean())


# ------------------------------------------------------------------------ the CRF (§6)


class _CRFLoss(torch.autograd.Function):
  """-(1/B) sum S^T W S; W symmetric, so the gradient is -(2/B) W S (one filtering)."""

  @staticmethod
  def forward(ctx, probs, images, filter_fn):
    ws = filter_fn(probs, images)
    ctx.save_for_backward(ws)
    return -(probs * ws).sum() / probs.shape[0]

  @staticmethod
  def backward(ctx, g):
    (ws,) = ctx.saved_tensors
    return (-2.0 / ws.shape[0]) * g * ws, None, None


class GridCRF:
  """The grid CRF loss for (B,H,W,K) probs and raw (B,H,W,3) images in 0..255."""

  def __init__(self, h: int, w: int, sigma_xy: float = 100.0, sigma_rgb: float = 15.0,
               cell: float = 0.5, chunk: int = 4):
    # The grid's constants (colour nodes and blur, spatial modes, dither thresholds) are
    # fcam_jax's own numpy ones; the filtering below is torch's.
    from fcam_jax.losses import crf  # pylint: disable=g-import-not-at-top
    c = crf._grid_consts(h, w, float(sigma_xy), float(sigma_rgb), float(cell))
    self.nc, self.colour_pitch, self.chunk = c.nc, c.colour_pitch, chunk
    self.b0, self.b1 = c.self_weights
    self.colour_blur = torch.from_numpy(c.colour_blur)
    self.modes = torch.from_numpy(c.modes)  # (H*W, M)
    self.dither = torch.from_numpy(c.dither).view(h, w, 3)
    self.rows = crf._DITHER_ROWS

  def filter(self, s, images):
    """W s: s (B,H,W,K), images (B,H,W,3) -> (B,H,W,K), `chunk` images at a time."""
    if 0 < self.chunk < s.shape[0]:
      return torch.cat([self._filter(s[i:i + self.chunk], images[i:i + self.chunk])
                        for i in range(0, s.shape[0], self.chunk)])
    return self._filter(s, images)

  def _filter(self, s, images):
    bsz, h, w, k = s.shape
    nc, m = self.nc, self.modes.shape[1]
    batch = torch.arange(bsz).view(bsz, 1, 1)
    pos = images.clamp(0, 255) / self.colour_pitch
    low = pos.floor().clamp(0, nc - 2)
    frac = pos - low
    low = low.long()
    q = frac * (1 - frac)
    norm = torch.rsqrt((self.b0 - 2 * (self.b0 - self.b1) * q).prod(-1)).unsqueeze(-1)
    row = lambda node: ((node[..., 0] * nc + node[..., 1]) * nc + node[..., 2]) * bsz + batch
    vals = ((s * norm).reshape(bsz, h * w, k, 1) * self.modes.view(1, h * w, 1, m))
    vals = vals.reshape(-1, k * m) / self.rows
    index = torch.cat([row(low + (frac > (self.dither + j / self.rows) % 1.0).long()).view(-1)
                       for j in range(self.rows)])
    grid = torch.zeros(nc ** 3 * bsz, k * m).index_add_(0, index, vals.repeat(self.rows, 1))
    a = self.colour_blur
    grid = a @ grid.view(nc, -1)
    grid = torch.matmul(a, grid.view(nc, nc, -1))
    grid = torch.matmul(a, grid.view(nc * nc, nc, -1)).view(-1, k * m)
    base = row(low).view(bsz, h * w)
    frac = frac.view(bsz, h * w, 3)
    acc = 0.0
    for c0 in (0, 1):
      for c1 in (0, 1):
        for c2 in (0, 1):
          wgt = ((frac[..., 0] if c0 else 1 - frac[..., 0]) * (frac[..., 1] if c1 else 1 - frac[..., 1])
                 * (frac[..., 2] if c2 else 1 - frac[..., 2]))
          offset = ((c0 * nc + c1) * nc + c2) * bsz
          acc = acc + wgt.unsqueeze(-1) * grid.index_select(0, (base + offset).view(-1)).view(
              bsz, h * w, k * m)
    out = torch.einsum("bpkm,pm->bpk", acc.view(bsz, h * w, k, m), self.modes)
    return out.view(bsz, h, w, k) * norm

  def __call__(self, probs, images):
    return _CRFLoss.apply(probs, images.float(), self.filter)


class ExactCRF:
  """The exact Gaussian kernel as a dense matrix, on images downscaled by `scale` (Tang's
  DenseCRFLoss resizing: image nearest, probs bilinear, sigma_xy * scale)."""

  def __init__(self, sigma_xy: float = 100.0, sigma_rgb: float = 15.0, scale: float = 0.25):
    self.sigma_xy, self.sigma_rgb, self.scale = sigma_xy, sigma_rgb, scale

  def filter(self, s, images):
    b, h, w, k = s.shape
    sxy = self.sigma_xy * self.scale
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy = torch.stack([yy, xx], -1).view(1, -1, 2).float().expand(b, -1, -1) / sxy
    feats = torch.cat([xy, images.reshape(b, -1, 3) / self.sigma_rgb], -1)
    kernel = torch.exp(-0.5 * torch.cdist(feats, feats).square())  # (B, N, N)
    return torch.bmm(kernel, s.reshape(b, -1, k)).view(s.shape)

  def __call__(self, probs, images):
    sc = self.scale
    images = F.interpolate(images.permute(0, 3, 1, 2).float(), scale_factor=sc, mode="nearest")
    probs = F.interpolate(probs.permute(0, 3, 1, 2), scale_factor=sc, mode="bilinear",
                          align_corners=False)
    return _CRFLoss.apply(probs.permute(0, 2, 3, 1), images.permute(0, 2, 3, 1), self.filter)


# ------------------------------------------------------------------------ the train step


class Stage2:
  """One stage-2 SGD step of the decoder (docs/design.md §6, §7), in PyTorch eager."""

  def __init__(self, classifier: Classifier, decoder: Decoder, crf, *, encoder_passes: int = 2,
               lr=0.01, momentum=0.9, weight_decay=1e-4, crf_weight=2e-9, size_weight=0.1,
               seeds_config=None, seed: int = 0):
    self.classifier = classifier.eval().to(memory_format=torch.channels_last)
    for p in self.classifier.parameters():
      p.requires_grad_(False)
    self.decoder = decoder.train().to(memory_format=torch.channels_last)
    self.crf, self.encoder_passes = crf, encoder_passes
    self.crf_weight, self.size_weight = crf_weight, size_weight
    self.seeds_config = seeds_config or {}
    self.opt = torch.optim.SGD(self.decoder.parameters(), lr=lr, momentum=momentum,
                               nesterov=True, weight_decay=weight_decay)
    self.generator = torch.Generator().manual_seed(seed)
    self.elb_t = 1.0

  def losses(self, raw, labels, seeds=None):
    """(loss, terms); `seeds` (B,H,W) overrides the sampled ones (parity checks)."""
    x = normalize(raw)
    size = tuple(x.shape[2:])
    with torch.inference_mode():
      _, taps = self.classifier(x)
      if seeds is None:
        cams = cam_star(self.classifier, taps[-1], labels, size)
        seeds = sample_seeds(cams, self.generator, **self.seeds_config)
      if self.encoder_passes == 2:  # the original: the decoder's features from another pass
        _, taps = self.classifier(x)
    taps = [t.clone() for t in taps]  # inference tensors cannot be saved for backward
    logits = self.decoder(taps, size)
    probs = F.softmax(logits, 1)
    terms = {"seeds": partial_cross_entropy(logits, seeds.clone()),
             "crf": self.crf(probs.permute(0, 2, 3, 1), raw),
             "size": size_loss(probs, self.elb_t)}
    loss = terms["seeds"] + self.crf_weight * terms["crf"] + self.size_weight * terms["size"]
    return loss, terms

  def step(self, raw, labels):
    """raw (B,H,W,3) uint8 tensor, labels (B,) int64 -> the loss (a float)."""
    loss, _ = self.losses(raw, labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return float(loss.detach())
