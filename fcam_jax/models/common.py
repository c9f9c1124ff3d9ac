"""Layers shared by the backbones: torchvision-style conv, BatchNorm and pooling."""

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
IntOrPair = Union[int, Sequence[int]]


def _pair(v: IntOrPair):
  return (v, v) if isinstance(v, int) else tuple(v)


def explicit_padding(padding: IntOrPair):
  """torch's symmetric `padding=p` as a flax padding spec (never 'SAME')."""
  ph, pw = _pair(padding)
  return ((ph, ph), (pw, pw))


def Conv(features: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
         padding: IntOrPair = 0, use_bias: bool = True, dtype: Dtype = jnp.float32,
         kernel_init=nn.initializers.kaiming_normal(), name: Optional[str] = None):
  """nn.Conv with torch's (kernel, stride, padding) semantics; kernel is HWIO."""
  return nn.Conv(features, _pair(kernel_size), strides=_pair(stride),
                 padding=explicit_padding(padding), use_bias=use_bias, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


def BatchNorm(train: bool, epsilon: float = 1e-5, axis_name: Optional[str] = None,
              dtype: Dtype = jnp.float32, name: Optional[str] = None):
  """torch BatchNorm2d (momentum 0.1 == flax 0.9); `axis_name` syncs batch stats."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=epsilon,
                      axis_name=axis_name if train else None, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def max_pool(x, window: int, stride: int, padding: int = 0, ceil_mode: bool = False):
  """torch MaxPool2d: -inf padding, optional ceil mode (extra right/bottom padding)."""
  pads = []
  for size in x.shape[1:3]:
    lo = hi = padding
    if ceil_mode:
      out = -(-(size + 2 * padding - window) // stride) + 1
      # torch drops a last window that would start inside the right padding.
      if (out - 1) * stride >= size + padding:
        out -= 1
      hi = max(hi, (out - 1) * stride + window - size - padding)
    pads.append((lo, hi))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


def avg_pool(x, window: int, stride: int, padding: int = 0, count_include_pad: bool = True):
  """torch AvgPool2d (floor mode)."""
  pads = ((padding, padding), (padding, padding))
  return nn.avg_pool(x, (window, window), strides=(stride, stride), padding=pads,
                     count_include_pad=count_include_pad)


class ConvBNReLU(nn.Module):
  """Conv (no bias) -> BatchNorm -> ReLU: the backbones' and the decoder's building block."""
  features: int
  kernel_size: IntOrPair = 3
  stride: IntOrPair = 1
  padding: IntOrPair = 1
  bn_epsilon: float = 1e-5
  bn_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.kaiming_normal()

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Conv(self.features, self.kernel_size, self.stride, self.padding, use_bias=False,
             dtype=self.dtype, kernel_init=self.kernel_init, name="conv")(x)
    x = BatchNorm(train, self.bn_epsilon, self.bn_axis_name, self.dtype, name="bn")(x)
    return nn.relu(x)


xavier_uniform = nn.initializers.xavier_uniform()
kaiming_uniform_relu = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
