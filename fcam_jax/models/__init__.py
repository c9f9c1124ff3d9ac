"""Model zoo: WSOL backbones, the WGAP head, the classifier and the U-Net decoder."""

import importlib
from typing import Dict, Tuple, Type

import jax.numpy as jnp

from fcam_jax.models.backbone import Backbone
from fcam_jax.models.classifier import Classifier, imagenet_standardize

# name -> ("module:Class", display name); the classes are imported lazily, so one broken
# backbone cannot break the rest.
_BACKBONES: Dict[str, Tuple[str, str]] = {
    "small": ("fcam_jax.models.small:SmallNet", "Small"),
    "resnet50": ("fcam_jax.models.resnet:ResNet50", "ResNet50"),
    "vgg16": ("fcam_jax.models.vgg:VGG16", "VGG16"),
    "inceptionv3": ("fcam_jax.models.inception:InceptionV3", "InceptionV3"),
}
BACKBONES = tuple(_BACKBONES)
DISPLAY_NAMES = {name: display for name, (_, display) in _BACKBONES.items()}


def backbone_class(name: str) -> Type[Backbone]:
  if name not in _BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
  module, cls = _BACKBONES[name][0].split(":")
  return getattr(importlib.import_module(module), cls)


def build_classifier(model_config, bn_axis_name=None, dtype=None) -> Classifier:
  """The stage-1 classifier described by `config.model`."""
  backbone = backbone_class(model_config.backbone)(
      bn_axis_name=bn_axis_name, dtype=dtype or jnp.float32)
  return Classifier(backbone=backbone, num_classes=model_config.num_classes)
