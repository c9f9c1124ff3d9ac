"""fcam_jax: F-CAM (full-resolution class activation maps) in JAX/Flax."""

__version__ = "0.1.0"
