"""CAM methods (SPEC §4): raw maps at a tap's resolution, then normalize and upsample."""

from fcam_jax.cams.maps import normalize, upsample
from fcam_jax.cams.methods import (DEFAULT_OPTIONS, METHODS, class_gradients, compute,
                                   compute_from_taps)

__all__ = ["METHODS", "DEFAULT_OPTIONS", "compute", "compute_from_taps", "class_gradients",
           "normalize", "upsample"]
