"""The WGAP classification head (docs/design.md §3): global average pooling + dense."""

import flax.linen as nn
import jax.numpy as jnp

from fcam_jax.models import common


class WGAPHead(nn.Module):
  """logits = Dense(mean_hw(A)); the Dense kernel (C, K) gives the CAM weights."""
  num_classes: int
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, features):
    pooled = jnp.mean(features, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=common.xavier_uniform,
                    bias_init=nn.initializers.zeros, dtype=self.dtype,
                    param_dtype=jnp.float32, name="fc")(pooled)


def cam_weights(params) -> jnp.ndarray:
  """The (C, K) class weights of the head, from the classifier's params."""
  return params["head"]["fc"]["kernel"]
