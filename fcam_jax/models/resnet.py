"""ResNet50 for WSOL (docs/design.md §2): torchvision v1.5, layer3 and layer4 at stride 1.

At 224x224: stem 64@112, layer1 256@56, layer2 512@28, layer3 1024@28,
layer4 2048@28. The stem is conv1 7x7/2 + bn1 + ReLU; the 3x3/2 max-pool opens
layer1. Bottleneck v1.5: the stride is on the 3x3 conv (conv2); every layer's
first block has a 1x1 projection shortcut (`downsample`). BN eps 1e-5.

Parameter names (`torchvision_key`): a flax path maps to torchvision's
`resnet50` state-dict key by dropping `stem/`, `blockN` -> `N`,
`downsample_conv` -> `downsample.0`, `downsample_bn` -> `downsample.1`, and the
leaf kernel/scale -> weight, bias -> bias, mean/var -> running_mean/running_var
(conv kernels are HWIO, torch's OIHW transposed by (2, 3, 1, 0)). E.g.
`layer1/block0/conv1/kernel` -> `layer1.0.conv1.weight`.
"""

import functools
from typing import Any, ClassVar, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from fcam_jax.models import common
from fcam_jax.models.backbone import Backbone

TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var"}


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride) -> 1x1 (x4), + shortcut, ReLU."""
  planes: int
  stride: int = 1
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(common.Conv, use_bias=False, dtype=self.dtype,
                          kernel_init=common.kaiming_normal_fan_out)
    bn = functools.partial(common.BatchNorm, train, 1e-5, self.bn_axis_name, self.dtype)
    out_ch = self.planes * 4
    y = nn.relu(bn(name="bn1")(conv(self.planes, 1, name="conv1")(x)))
    y = nn.relu(bn(name="bn2")(conv(self.planes, 3, self.stride, 1, name="conv2")(y)))
    y = bn(name="bn3")(conv(out_ch, 1, name="conv3")(y))
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = bn(name="downsample_bn")(conv(out_ch, 1, self.stride, name="downsample_conv")(x))
    return nn.relu(y + x)


class ResLayer(nn.Module):
  """[max-pool 3x3/2 (layer1 only)] + `blocks` bottlenecks; the first one strided."""
  planes: int
  blocks: int
  stride: int
  pool: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.pool:
      x = common.max_pool(x, 3, 2, 1)
    for i in range(self.blocks):
      x = Bottleneck(self.planes, self.stride if i == 0 else 1, self.bn_axis_name,
                     self.dtype, name=f"block{i}")(x, train)
    return x


class Stem(nn.Module):
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = common.Conv(64, 7, 2, 3, use_bias=False, dtype=self.dtype,
                    kernel_init=common.kaiming_normal_fan_out, name="conv1")(x)
    x = common.BatchNorm(train, 1e-5, self.bn_axis_name, self.dtype, name="bn1")(x)
    return nn.relu(x)


class ResNet50(Backbone):
  STAGES: ClassVar[Tuple[str, ...]] = ("stem", "layer1", "layer2", "layer3", "layer4")
  CAM_TAP: ClassVar[str] = "layer4"
  DECODER_TAPS: ClassVar[Tuple[str, ...]] = STAGES
  CLASSIFIER_GROUP: ClassVar[Tuple[str, ...]] = ("layer4",)
  FEATURES: ClassVar[int] = 2048
  # (planes, blocks, stride) of layer1..layer4; WSOL: layer3/layer4 stride 1.
  LAYERS: ClassVar[Tuple[Tuple[int, int, int], ...]] = (
      (64, 3, 1), (128, 4, 2), (256, 6, 1), (512, 3, 1))

  def stages(self):
    out = [("stem", Stem(self.bn_axis_name, self.dtype, name="stem"))]
    for i, (planes, blocks, stride) in enumerate(self.LAYERS):
      name = f"layer{i + 1}"
      out.append((name, ResLayer(planes, blocks, stride, pool=i == 0,
                                 bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                                 name=name)))
    return out


def torchvision_key(path: Sequence[str]) -> str:
  """Flax variable path inside the backbone -> torchvision resnet50 key."""
  *mods, leaf = path
  parts = []
  for m in mods:
    if m == "stem":
      continue
    if m.startswith("block"):
      parts.append(m[len("block"):])
    elif m.startswith("downsample_"):
      parts += ["downsample", "0" if m.endswith("conv") else "1"]
    else:
      parts.append(m)
  return ".".join(parts + [TORCH_LEAF[leaf]])
