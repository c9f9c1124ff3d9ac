"""VGG16 for WSOL (docs/design.md §2), as wsolevaluation's `VggCam` ('28x28' config).

The 13 torchvision convs (3x3, pad 1, bias, ReLU, no BN) with pool4 and pool5
removed, so only pool1-3 (2x2/2) remain, then the extra conv6 3x3 512->1024 + ReLU.
Stages at 224x224: block1 64@224 (before pool1), block2 128@112, block3 256@56,
block4 512@28 (pool3 + conv4_x), block5 512@28 (conv5_x), conv6 1024@28.

The decoder skips block1: the original encoder's feature list starts at 64@224
and its U-Net drops the first feature ("same resolution as the input"), so the
decoder sees 128@112, 256@56 and 1024@28 (docs/design.md §5's 23.1M parameters).

Parameter names (`torchvision_key`): `block{b}/conv{k}` is torchvision vgg16's
`features.{i}` with i = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 for
conv1_1..conv5_3 (the ImageNet checkpoint's indices; the original WSOL model,
without pool4, renumbers conv5_x as features.23/25/27); `conv6` is `conv6`.
Leaves: kernel -> weight (HWIO = OIHW transposed by (2, 3, 1, 0)), bias -> bias.
"""

from typing import Any, ClassVar, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcam_jax.models import common
from fcam_jax.models.backbone import Backbone

TORCH_LEAF = {"kernel": "weight", "bias": "bias"}


def _conv(features, dtype, name):
  # torchvision VGG and wsolevaluation ('he'): kaiming normal fan_out, zero bias.
  return common.Conv(features, 3, 1, 1, use_bias=True, dtype=dtype,
                     kernel_init=common.kaiming_normal_fan_out, name=name)


def _conv6(features, in_features, dtype):
  # The original creates conv6 after torchvision's init loop: it keeps torch's
  # default Conv2d init, U(+-1/sqrt(fan_in)) for weight and bias.
  bound = (9 * in_features) ** -0.5
  return nn.Conv(features, (3, 3), padding=common.explicit_padding(1), dtype=dtype,
                 param_dtype=jnp.float32,
                 kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                 bias_init=lambda key, shape, dt=jnp.float32: jax.random.uniform(
                     key, shape, dt, -bound, bound), name="conv6")


class VGGBlock(nn.Module):
  """[max-pool 2x2/2] then Conv3x3-ReLU per width."""
  widths: Tuple[int, ...]
  pool: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if self.pool:
      x = common.max_pool(x, 2, 2)
    for k, width in enumerate(self.widths):
      x = nn.relu(_conv(width, self.dtype, f"conv{k + 1}")(x))
    return x


class VGG16(Backbone):
  STAGES: ClassVar[Tuple[str, ...]] = ("block1", "block2", "block3", "block4", "block5",
                                       "conv6")
  CAM_TAP: ClassVar[str] = "conv6"
  DECODER_TAPS: ClassVar[Tuple[str, ...]] = ("block2", "block3", "conv6")
  CLASSIFIER_GROUP: ClassVar[Tuple[str, ...]] = ("conv6",)
  FEATURES: ClassVar[int] = 1024
  DECODER_CHANNELS: ClassVar[Tuple[int, ...]] = (256, 128, 64)
  DECODER_CENTER: ClassVar[bool] = True
  # (widths, max-pool before the block): pool4 (before block5) is removed.
  BLOCKS: ClassVar[Tuple[Tuple[Tuple[int, ...], bool], ...]] = (
      ((64, 64), False), ((128, 128), True), ((256, 256, 256), True),
      ((512, 512, 512), True), ((512, 512, 512), False))

  # bn_axis_name is unused (no BatchNorm); kept for the common interface.

  def stages(self):
    out = []
    for b, (widths, pool) in enumerate(self.BLOCKS):
      name = f"block{b + 1}"
      out.append((name, VGGBlock(widths, pool, self.dtype, name=name)))
    conv6 = _conv6(self.FEATURES, self.BLOCKS[-1][0][-1], self.dtype)
    out.append(("conv6", lambda x, train: nn.relu(conv6(x))))
    return out


def _torchvision_indices():
  """conv (block, k) -> index in torchvision vgg16 `features` (cfg 'D')."""
  idx, table = 0, {}
  for b, n in enumerate((2, 2, 3, 3, 3)):
    for k in range(n):
      table[(b + 1, k + 1)] = idx
      idx += 2  # conv + ReLU
    idx += 1    # max-pool
  return table


_TV_INDEX = _torchvision_indices()


def torchvision_key(path: Sequence[str]) -> str:
  """Flax param path inside the backbone -> torchvision vgg16 key (conv6: ours)."""
  *mods, leaf = path
  if mods == ["conv6"]:
    return f"conv6.{TORCH_LEAF[leaf]}"
  block, conv = mods
  i = _TV_INDEX[(int(block[len("block"):]), int(conv[len("conv"):]))]
  return f"features.{i}.{TORCH_LEAF[leaf]}"
