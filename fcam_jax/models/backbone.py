"""The interface every WSOL backbone implements: an ordered list of named stages.

A backbone is a sequence of stages; the output of each stage is a *tap* (NHWC).
`__call__(x, train, start_after=None)` runs the stages in order and returns the
dict of taps it computed. With `start_after=name`, `x` is taken to be the output of
stage `name` and only the later stages run: this is what lets the CAM methods take
the gradient of the logits with respect to any tap (`Classifier.logits_from`).
"""

from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

Stage = Tuple[str, Callable[..., Any]]


class Backbone(nn.Module):
  """Base class. Subclasses implement `stages()` and set the class constants."""

  # Stage names in execution order; every stage output is a tap.
  STAGES: ClassVar[Tuple[str, ...]] = ()
  # The paper's CAM layer (post-ReLU output of the last block).
  CAM_TAP: ClassVar[str] = ""
  # The U-Net decoder's skip taps, shallowest first, deepest (= bottleneck) last.
  DECODER_TAPS: ClassVar[Tuple[str, ...]] = ()
  # Stages trained at 10x the learning rate in stage 1 (docs/design.md §7), with the head.
  CLASSIFIER_GROUP: ClassVar[Tuple[str, ...]] = ()
  # Output channels of the last stage (the head's input).
  FEATURES: ClassVar[int] = 0
  # The F-CAM decoder's block widths and whether it has a center block (docs/design.md §5).
  DECODER_CHANNELS: ClassVar[Tuple[int, ...]] = (256, 128, 64, 32, 16)
  DECODER_CENTER: ClassVar[bool] = False

  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def stages(self) -> List[Stage]:
    """[(name, fn(x, train) -> x)], called inside the compact `__call__`."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x, train: bool = False, start_after: Optional[str] = None
               ) -> Dict[str, jnp.ndarray]:
    stages = self.stages()
    names = [n for n, _ in stages]
    assert tuple(names) == self.STAGES, (names, self.STAGES)
    if start_after is not None and start_after not in names:
      raise ValueError(f"unknown tap {start_after!r}; {type(self).__name__} taps: {names}")
    taps = {}
    running = start_after is None
    for name, fn in stages:
      if running:
        x = fn(x, train)
        taps[name] = x
      elif name == start_after:
        running = True
    return taps
