r"""ILSVRC 2012 (wsolevaluation metadata; boxes; 1000 classes).

  python -m fcam_jax.main --config=configs/ilsvrc.py:resnet50,cam --workdir=$WORK/ilsvrc_resnet50_cam \
      --config.dataset.data_root=$ILSVRC --config.dataset.metadata_root=$ILSVRC_METADATA

Not in the F-CAM paper's table. A starting recipe, not a tuned one: 10 epochs from
ImageNet weights, lr decayed 10x every 3 epochs, MaxBoxAccV2 selection on val.
"""

import os

from fcam_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.dataset.name = "ILSVRC"
  config.dataset.data_root = os.environ.get("ILSVRC_DATA_ROOT", "")
  config.dataset.metadata_root = os.environ.get("ILSVRC_METADATA_ROOT", "")
  config.model.num_classes = 1000
  config.stage1.epochs = 10
  config.stage1.lr_decay_epochs = 3
  config.stage2.epochs = 10
  config.eval.selection_metric = "MaxBoxAccV2"
  return config_lib.apply_arg(config, arg)
