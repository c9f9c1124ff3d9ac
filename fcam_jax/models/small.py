"""A small VGG-like backbone for CPU demos and tests (not in the paper).

Four stages of two Conv3x3-BN-ReLU, with a 2x2 max-pool before stages 2-4, so the
CAM is at 1/8 of the input resolution, like ResNet50-WSOL's 28x28 at 224x224.
"""

from typing import ClassVar, Tuple

import flax.linen as nn

from fcam_jax.models import common
from fcam_jax.models.backbone import Backbone


class _Block(nn.Module):
  features: int
  pool: bool
  bn_axis_name: object = None
  dtype: object = None

  @nn.compact
  def __call__(self, x, train=False):
    if self.pool:
      x = common.max_pool(x, 2, 2)
    for i in range(2):
      x = common.ConvBNReLU(self.features, 3, 1, 1, bn_axis_name=self.bn_axis_name,
                            dtype=self.dtype, name=f"conv{i + 1}")(x, train)
    return x


class SmallNet(Backbone):
  STAGES: ClassVar[Tuple[str, ...]] = ("block1", "block2", "block3", "block4")
  CAM_TAP: ClassVar[str] = "block4"
  DECODER_TAPS: ClassVar[Tuple[str, ...]] = ("block1", "block2", "block3", "block4")
  CLASSIFIER_GROUP: ClassVar[Tuple[str, ...]] = ("block4",)
  FEATURES: ClassVar[int] = 128
  DECODER_CHANNELS: ClassVar[Tuple[int, ...]] = (64, 32, 16)
  WIDTHS: ClassVar[Tuple[int, ...]] = (16, 32, 64, 128)

  def stages(self):
    out = []
    for i, (name, width) in enumerate(zip(self.STAGES, self.WIDTHS)):
      block = _Block(width, pool=i > 0, bn_axis_name=self.bn_axis_name,
                     dtype=self.dtype, name=name)
      out.append((name, block))
    return out
