r"""CUB-200-2011 (docs/design.md §7): stage 1 then stage 2, ResNet50 + CAM by default.

  python -m fcam_jax.data.prepare_cub --cub_root=$CUB/CUB_200_2011 --out=$CUB/metadata
  python -m fcam_jax.main --config=configs/cub.py:resnet50,cam --workdir=$WORK/cub_resnet50_cam \
      --config.dataset.data_root=$CUB/CUB_200_2011/images --config.dataset.metadata_root=$CUB/metadata

The arg is `backbone,method[,stage]`: backbone in resnet50 | vgg16 | inceptionv3,
method in cam | gradcam | gradcampp | smoothgradcampp | xgradcam | layercam (and the
others of fcam_jax.cams), stage in stage1 | stage2 | both (default).
Selection: MaxBoxAcc on val (threshold step 0.004); test at step 0.001.
Expected (paper, Table 1, ImageNet-pretrained backbones): CUB MaxBoxAcc
CAM* 71.5 (ResNet50) / 61.6 (VGG16) / 58.8 (InceptionV3) -> with F-CAM 90.3 / 87.3 / 82.0.
"""

import os

from fcam_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()  # the paper's CUB recipe (docs/design.md §7)
  config.dataset.data_root = os.environ.get("CUB_DATA_ROOT", "")
  config.dataset.metadata_root = os.environ.get("CUB_METADATA_ROOT", "")
  return config_lib.apply_arg(config, arg)
