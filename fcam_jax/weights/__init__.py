"""ImageNet (torchvision) checkpoints for the WSOL backbones."""

from fcam_jax.weights.load import (ARCHS, Report, backbone_shapes, convert_state_dict,
                                   load_pretrained, read_converted, save_npz, torchvision_key)
from fcam_jax.weights.state_dict import PretrainedError, read_state_dict
