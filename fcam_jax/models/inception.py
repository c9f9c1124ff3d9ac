"""InceptionV3 for WSOL (docs/design.md §2), SPG-style as wsolevaluation / F-CAM's encoder.

torchvision's Inception3 up to Mixed_6e (no Mixed_7*, no aux head) with:
- every 3x3 conv padded 1 (F-CAM's encoder pads Conv2d_2a_3x3 and Conv2d_4a_3x3,
  which are unpadded in torchvision and wsolevaluation) and both stem max-pools
  3x3/2, padding 1, ceil mode;
- no max-pool before Mixed_6a ("large feature map"), and Mixed_6a at stride 1 with
  padding 1 (its pool branch: max-pool 3x3/1, padding 1);
- two SPG blocks SPG_A3_1b / SPG_A3_2b: Dropout(0.5), Conv3x3 (pad 1, bias) 768->1024
  / 1024->1024, ReLU.
BN eps 1e-3. Average pools are 3x3/1, padding 1, counting the padding (torch default).
At 224x224 every top-level module is a stage (a max-pool belongs to the stage after
it): Conv2d_2b_3x3 64@112, Conv2d_3b_1x1 80@57, Mixed_5c 288@29, Mixed_6e 768@29,
SPG_A3_2b 1024@29 are the decoder taps (the original encoder's stage boundaries).

Dropout: `train=True` needs an rng named 'dropout' (`apply(..., rngs={'dropout': k})`).

Inits as wsolevaluation / F-CAM (`initialize_weights(..., 'xavier')`): every conv
xavier-uniform, conv biases zero, BN scale 1 / bias 0.

Parameter names (`torchvision_key`): the flax path joined with '.' is torchvision's
Inception3 key (e.g. `Mixed_5b/branch5x5_2/conv/kernel` -> `Mixed_5b.branch5x5_2.conv
.weight`), leaf kernel/scale -> weight, bias -> bias, mean/var -> running_mean/var
(kernels HWIO = OIHW transposed by (2, 3, 1, 0)). The SPG convs map to F-CAM's
`SPG_A3_1b.1.*` (index 1 after the Dropout; wsolevaluation's model uses `.0`).
"""

from typing import Any, ClassVar, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from fcam_jax.models import common
from fcam_jax.models.backbone import Backbone

TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
              "mean": "running_mean", "var": "running_var"}
BN_EPS = 1e-3


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BN (eps 1e-3) -> ReLU, named conv / bn like torchvision."""
  features: int
  kernel_size: Any
  stride: int = 1
  padding: Any = 0
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = common.Conv(self.features, self.kernel_size, self.stride, self.padding,
                    use_bias=False, dtype=self.dtype, kernel_init=common.xavier_uniform,
                    name="conv")(x)
    x = common.BatchNorm(train, BN_EPS, self.bn_axis_name, self.dtype, name="bn")(x)
    return nn.relu(x)


class _Mixed(nn.Module):
  """Shared plumbing: `conv(name, features, kernel, ...)` builds a BasicConv2d."""
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def conv(self, name, features, kernel, stride=1, padding=0):
    return BasicConv2d(features, kernel, stride, padding, self.bn_axis_name, self.dtype,
                       name=name)


class InceptionA(_Mixed):
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b1 = self.conv("branch1x1", 64, 1)(x, train)
    b5 = self.conv("branch5x5_1", 48, 1)(x, train)
    b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5, train)
    b3 = self.conv("branch3x3dbl_1", 64, 1)(x, train)
    b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3, train)
    b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3, train)
    bp = common.avg_pool(x, 3, 1, 1)
    bp = self.conv("branch_pool", self.pool_features, 1)(bp, train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Mixed):
  """Mixed_6a, WSOL variant: stride 1, padding 1 (torchvision: stride 2, no pad)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3 = self.conv("branch3x3", 384, 3, 1, 1)(x, train)
    bd = self.conv("branch3x3dbl_1", 64, 1)(x, train)
    bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd, train)
    bd = self.conv("branch3x3dbl_3", 96, 3, 1, 1)(bd, train)
    bp = common.max_pool(x, 3, 1, 1)
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(_Mixed):
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, train: bool = False):
    c7 = self.channels_7x7
    b1 = self.conv("branch1x1", 192, 1)(x, train)
    b7 = self.conv("branch7x7_1", c7, 1)(x, train)
    b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7, train)
    b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7, train)
    bd = self.conv("branch7x7dbl_1", c7, 1)(x, train)
    bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd, train)
    bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd, train)
    bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd, train)
    bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd, train)
    bp = common.avg_pool(x, 3, 1, 1)
    bp = self.conv("branch_pool", 192, 1)(bp, train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class SPGBlock(nn.Module):
  """Dropout(0.5) -> Conv3x3 (pad 1, bias) -> ReLU."""
  features: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dropout(0.5, deterministic=not train)(x)
    x = common.Conv(self.features, 3, 1, 1, use_bias=True, dtype=self.dtype,
                    kernel_init=common.xavier_uniform, name="conv")(x)
    return nn.relu(x)


def _after_pool(module):
  """The stage: max-pool 3x3/2, padding 1, ceil mode, then `module`."""
  return lambda x, train: module(common.max_pool(x, 3, 2, 1, ceil_mode=True), train)


class InceptionV3(Backbone):
  STAGES: ClassVar[Tuple[str, ...]] = (
      "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
      "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
      "Mixed_6e", "SPG_A3_1b", "SPG_A3_2b")
  CAM_TAP: ClassVar[str] = "SPG_A3_2b"
  DECODER_TAPS: ClassVar[Tuple[str, ...]] = (
      "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Mixed_5c", "Mixed_6e", "SPG_A3_2b")
  CLASSIFIER_GROUP: ClassVar[Tuple[str, ...]] = ("SPG_A3_1b", "SPG_A3_2b")
  FEATURES: ClassVar[int] = 1024

  def stages(self):
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    conv = lambda name, f, k, s=1, p=0: BasicConv2d(f, k, s, p, name=name, **kw)
    return [
        ("Conv2d_1a_3x3", conv("Conv2d_1a_3x3", 32, 3, 2, 1)),
        ("Conv2d_2a_3x3", conv("Conv2d_2a_3x3", 32, 3, 1, 1)),
        ("Conv2d_2b_3x3", conv("Conv2d_2b_3x3", 64, 3, 1, 1)),
        ("Conv2d_3b_1x1", _after_pool(conv("Conv2d_3b_1x1", 80, 1))),
        ("Conv2d_4a_3x3", conv("Conv2d_4a_3x3", 192, 3, 1, 1)),
        ("Mixed_5b", _after_pool(InceptionA(pool_features=32, name="Mixed_5b", **kw))),
        ("Mixed_5c", InceptionA(pool_features=64, name="Mixed_5c", **kw)),
        ("Mixed_5d", InceptionA(pool_features=64, name="Mixed_5d", **kw)),
        ("Mixed_6a", InceptionB(name="Mixed_6a", **kw)),
        ("Mixed_6b", InceptionC(channels_7x7=128, name="Mixed_6b", **kw)),
        ("Mixed_6c", InceptionC(channels_7x7=160, name="Mixed_6c", **kw)),
        ("Mixed_6d", InceptionC(channels_7x7=160, name="Mixed_6d", **kw)),
        ("Mixed_6e", InceptionC(channels_7x7=192, name="Mixed_6e", **kw)),
        ("SPG_A3_1b", SPGBlock(1024, self.dtype, name="SPG_A3_1b")),
        ("SPG_A3_2b", SPGBlock(1024, self.dtype, name="SPG_A3_2b")),
    ]


def torchvision_key(path: Sequence[str]) -> str:
  """Flax variable path inside the backbone -> torchvision Inception3 / F-CAM key."""
  *mods, leaf = path
  if mods[0].startswith("SPG_"):
    mods = [mods[0], "1"]
  return ".".join(list(mods) + [TORCH_LEAF[leaf]])
