r"""OpenImages30k (wsolevaluation split, pixel masks; docs/design.md §7-8): PxAP selection.

  python -m fcam_jax.main --config=configs/openimages.py:resnet50,cam --workdir=$WORK/oi_resnet50_cam \
      --config.dataset.data_root=$OI/images --config.dataset.metadata_root=$OI/metadata/OpenImages \
      --config.dataset.mask_root=$OI/masks

10 epochs, batch 32; other values as CUB (the paper tunes alpha in {1, 0.1} and
n- in 0.1..0.7 on val). Expected (paper, Table 1): PxAP CAM* 56.8 (ResNet50) /
53.0 (VGG16) / 62.7 (InceptionV3) -> with F-CAM 72.1 / 67.8 / 71.9.
"""

import os

from fcam_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.dataset.name = "OpenImages"
  config.dataset.data_root = os.environ.get("OPENIMAGES_DATA_ROOT", "")
  config.dataset.metadata_root = os.environ.get("OPENIMAGES_METADATA_ROOT", "")
  config.dataset.mask_root = os.environ.get("OPENIMAGES_MASK_ROOT", "")
  config.model.num_classes = 100
  config.stage1.epochs = 10
  config.stage1.lr_decay_epochs = 3
  config.stage2.epochs = 10
  config.eval.val_interval = 0.001
  config.eval.selection_metric = "PxAP"
  return config_lib.apply_arg(config, arg)
