"""Backbone + WGAP head: the stage-1 WSOL classifier."""

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from fcam_jax.models.backbone import Backbone
from fcam_jax.models.head import WGAPHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_standardize(raw_images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 (or 0..255 float) NHWC images -> the network input: (x / 255 - mean) / std."""
  x = raw_images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  return x.astype(dtype)


class Classifier(nn.Module):
  """`__call__(x) -> (logits, taps)`; `logits_from(a, tap)` runs the rest of the net."""
  backbone: Backbone
  num_classes: int

  def setup(self):
    self.head = WGAPHead(self.num_classes, dtype=self.backbone.dtype)

  def __call__(self, x, train: bool = False) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]:
    taps = self.backbone(x, train)
    logits = self.head(taps[self.backbone.STAGES[-1]])
    return logits.astype(jnp.float32), taps

  def logits_from(self, a: jnp.ndarray, tap: str, train: bool = False) -> jnp.ndarray:
    """Logits as a function of the output `a` of stage `tap` (for CAM gradients)."""
    last = self.backbone.STAGES[-1]
    if tap != last:
      a = self.backbone(a, train, start_after=tap)[last]
    return self.head(a).astype(jnp.float32)
