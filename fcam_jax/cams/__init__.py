"""CAM methods (docs/design.md §4): raw maps at a tap's resolution, min-max normalized,
then upsampled to the input size."""

from fcam_jax.cams.maps import minmax_normalize, upsample
from fcam_jax.cams.methods import (DEFAULT_OPTIONS, DISPLAY_NAMES, METHODS, PAPER_METHODS,
                                   class_gradients, compute, compute_from_taps, upsampled_maps)

__all__ = ["METHODS", "DISPLAY_NAMES", "PAPER_METHODS", "DEFAULT_OPTIONS", "compute",
           "compute_from_taps", "class_gradients", "minmax_normalize", "upsample",
           "upsampled_maps"]
