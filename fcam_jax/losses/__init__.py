"""The F-CAM stage-2 loss (docs/design.md §6): seeds cross-entropy + dense CRF + size constraint.

  L = w_seeds CE_seeds + lambda_crf CRF + lambda_asc 0.5 (ELB_t(-sum S_bg) + ELB_t(-sum S_fg))

Each term has an `enabled` switch and a `weight` in `config.fcam.{seeds,crf,size}`.
"""

import jax
import jax.numpy as jnp

from fcam_jax.losses.crf import bilateral_filter, dense_crf_loss
from fcam_jax.losses.elb import elb, next_t, size_loss
from fcam_jax.losses.seeds import (BACKGROUND, FOREGROUND, IGNORE, otsu_threshold,
                                   partial_cross_entropy, sample_seeds, seed_regions)

__all__ = [
    "BACKGROUND", "FOREGROUND", "IGNORE", "bilateral_filter", "dense_crf_loss", "elb",
    "next_t", "otsu_threshold", "partial_cross_entropy", "sample_seeds", "seed_regions",
    "size_loss", "total_loss",
]


def total_loss(logits, seeds, images_raw, t, config_fcam, axis_name=None):
  """(loss, terms) for decoder logits (B,H,W,2), seeds (B,H,W), raw images (B,H,W,3) in 0..255.

  `t` is the ELB parameter (a scalar, may be traced); `config_fcam` is `config.fcam`;
  `axis_name`: the pmap axis over which the seeds' cross-entropy is a global mean.
  `terms` holds each enabled term unweighted, for logging: `seeds`, `crf`, `size`.
  """
  terms = {}
  loss = jnp.zeros((), jnp.float32)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if config_fcam.seeds.enabled:
    terms["seeds"] = partial_cross_entropy(logits, seeds, axis_name)
    loss += config_fcam.seeds.weight * terms["seeds"]
  if config_fcam.crf.enabled:
    crf = config_fcam.crf
    terms["crf"] = dense_crf_loss(probs, images_raw, sigma_rgb=crf.sigma_rgb,
                                  sigma_xy=crf.sigma_xy, scale=crf.scale,
                                  grid_cell=crf.grid_cell, batch_chunk=crf.batch_chunk)
    loss += crf.weight * terms["crf"]
  if config_fcam.size.enabled:
    terms["size"] = size_loss(probs, t)
    loss += config_fcam.size.weight * terms["size"]
  return loss, terms
