"""The F-CAM U-Net decoder (docs/design.md §5).

`UNetDecoder(channels, center)(taps, out_size, train) -> (B, H, W, 2)` logits
(background, foreground). `taps` run shallow -> deep; the deepest is the bottleneck
and the others are the skips, deepest first. [VGG: a center block of two
Conv3x3-BN-ReLU at the bottleneck's width.] Decoder block i: nearest x2 upsample; if
skip i exists and has another size, bilinear resize (align_corners=True) to its
size; concatenate the skip; Conv3x3 (no bias)-BN-ReLU twice. Blocks beyond the skips
only upsample. Head: Conv3x3 -> 2, resized bilinearly (align_corners=True) to
`out_size` if the last block does not land on it.

Inits as segmentation_models_pytorch (the original): decoder convs kaiming-uniform
(fan_in, ReLU gain), BN 1 / 0, head xavier-uniform with zero bias.
"""

from typing import Any, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcam_jax.models import common


def _align_corners_taps(n_in: int, n_out: int):
  """Source indices and weights of 1-D linear interpolation, align_corners=True."""
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  pos = np.arange(n_out, dtype=np.float64) * scale
  lo = np.minimum(np.floor(pos).astype(np.int32), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  return lo, hi, pos - lo


def resize_bilinear_align_corners(x, size: Tuple[int, int]):
  """torch `F.interpolate(mode='bilinear', align_corners=True)` on NHWC `x`.

  jax.image.resize is half-pixel (align_corners=False); this maps output corner
  pixels onto input corner pixels. Separable: rows, then columns.
  """
  (h, w), dtype = size, x.dtype
  if x.shape[1] != h:
    lo, hi, f = _align_corners_taps(x.shape[1], h)
    f = jnp.asarray(f, dtype)[None, :, None, None]
    x = x[:, lo] * (1 - f) + x[:, hi] * f
  if x.shape[2] != w:
    lo, hi, f = _align_corners_taps(x.shape[2], w)
    f = jnp.asarray(f, dtype)[None, None, :, None]
    x = x[:, :, lo] * (1 - f) + x[:, :, hi] * f
  return x


def upsample_nearest2x(x):
  """torch `F.interpolate(scale_factor=2, mode='nearest')` on NHWC `x`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _conv_bn_relu(features: int, bn_axis_name, dtype, name: str) -> common.ConvBNReLU:
  """Conv3x3 (pad 1, no bias, kaiming-uniform) -> BN -> ReLU."""
  return common.ConvBNReLU(features, bn_axis_name=bn_axis_name, dtype=dtype,
                           kernel_init=common.kaiming_uniform_relu, name=name)


class DecoderBlock(nn.Module):
  features: int
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, skip=None, train: bool = False):
    x = upsample_nearest2x(x)
    if skip is not None:
      if x.shape[1:3] != skip.shape[1:3]:
        x = resize_bilinear_align_corners(x, skip.shape[1:3])
      x = jnp.concatenate([x, skip], axis=-1)
    for i in (1, 2):
      x = _conv_bn_relu(self.features, self.bn_axis_name, self.dtype, f"conv{i}")(x, train)
    return x


class UNetDecoder(nn.Module):
  """U-Net decoder over backbone taps; returns float32 logits (B, H, W, 2)."""
  channels: Tuple[int, ...] = (256, 128, 64, 32, 16)
  center: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, taps: Sequence[jnp.ndarray], out_size: Tuple[int, int],
               train: bool = False) -> jnp.ndarray:
    taps = [jnp.asarray(t, self.dtype) for t in taps]
    x, skips = taps[-1], taps[-2::-1]
    if self.center:
      for i in (1, 2):
        x = _conv_bn_relu(x.shape[-1], self.bn_axis_name, self.dtype,
                          f"center_conv{i}")(x, train)
    for i, features in enumerate(self.channels):
      skip = skips[i] if i < len(skips) else None
      x = DecoderBlock(features, self.bn_axis_name, self.dtype, name=f"block{i}")(
          x, skip, train)
    x = common.Conv(2, 3, 1, 1, use_bias=True, dtype=self.dtype,
                    kernel_init=common.xavier_uniform, name="head")(x)
    if x.shape[1:3] != tuple(out_size):
      x = resize_bilinear_align_corners(x, tuple(out_size))
    return x.astype(jnp.float32)


def skip_taps(taps, backbone) -> List[jnp.ndarray]:
  """The decoder's inputs from a backbone's taps (its `DECODER_TAPS`), as constants: the
  classifier is frozen in stage 2, no gradient flows into it."""
  return [jax.lax.stop_gradient(taps[name]) for name in backbone.DECODER_TAPS]


def decoder_for(backbone_cls, channels: Optional[Sequence[int]] = None, **kw) -> UNetDecoder:
  """The decoder of docs/design.md §5 for `backbone_cls` (its taps: `DECODER_TAPS`).

  `channels` overrides the backbone's `DECODER_CHANNELS` (None or empty: default);
  `kw` goes to UNetDecoder (bn_axis_name, dtype, center).
  """
  kw.setdefault("center", backbone_cls.DECODER_CENTER)
  return UNetDecoder(channels=tuple(channels or backbone_cls.DECODER_CHANNELS), **kw)
