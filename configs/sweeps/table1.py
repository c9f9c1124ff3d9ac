r"""Every row of the paper's Table 1 for one dataset: 6 CAM methods x 3 backbones, both stages.

  python -m fcam_jax.sweep --config=configs/cub.py --sweep=configs/sweeps/table1.py:$WEIGHTS \
      --workdir=$WORK/cub_table1
  python -m fcam_jax.report $WORK/cub_table1 --out=$WORK/cub_table1

(`configs/openimages.py` for OpenImages.) `$WEIGHTS` is the folder of the converted
ImageNet checkpoints `resnet50.npz`, `vgg16.npz`, `inceptionv3.npz` (README, "From
ImageNet weights"); without it the backbones start from random weights, which is not
the paper's protocol. Each of the 18 variants is a full run in `<workdir>/<backbone>_<method>`;
`--only=resnet50_cam,...` or `--shard=K/N` split the grid over machines. Expected: the
paper's Table 1 (printed alongside by fcam_jax.report).
"""

import os

from fcam_jax import config_lib

BACKBONES = ("vgg16", "inceptionv3", "resnet50")
METHODS = ("cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam")


def get_sweep(arg=None):
  variants = []
  for v in config_lib.product(config_lib.axis("model.backbone", BACKBONES), config_lib.axis("cam.method", METHODS)):
    v["name"] = f"{v['model.backbone']}_{v['cam.method']}"
    if arg:
      v["model.pretrained"] = os.path.join(arg, f"{v['model.backbone']}.npz")
    variants.append(v)
  return variants
