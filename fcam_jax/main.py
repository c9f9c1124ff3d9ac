"""Trains and evaluates F-CAM: `python -m fcam_jax.main --config=configs/cub.py --workdir=DIR`.

`--config=configs/cub.py:vgg16,gradcampp` picks the backbone and the CAM method;
`--config.stage1.epochs=5` (any key) overrides a value. Running the same command
again resumes from the last checkpoint.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fcam_jax import checkpoint
from fcam_jax import cli
from fcam_jax import config_lib
from fcam_jax import devices
from fcam_jax import distributed
from fcam_jax import train
from fcam_jax import weights
from fcam_jax.data import images
from fcam_jax.data import metadata


def define_flags():
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
  config_flags.DEFINE_config_file(
      "config", None, "A configs/*.py file, optionally with ':backbone,method,stage'.",
      lock_config=True)
  flags.mark_flags_as_required(["config", "workdir"])


# Errors of the data a run reads (exit 1); config errors (exit 2) are cli's.
DATA_ERRORS = (metadata.MetadataError, images.ImageError, checkpoint.CheckpointNotFoundError,
               weights.PretrainedError, devices.NoAcceleratorError, train.NonFiniteError, OSError)


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    config = config_lib.validate(flags.FLAGS.config)
    distributed.initialize_from_config(config)
  except (FileNotFoundError, ImportError, AttributeError, ValueError) as e:
    cli.fail(str(e))  # the config's own values (ConfigError is a ValueError)
  devices.check(config.require_accelerator)
  try:
    train.train_and_evaluate(config, flags.FLAGS.workdir)
  except train.Preempted as e:  # a checkpoint is saved: exit 0 so schedulers requeue
    logging.warning("%s", e)
    print(str(e), file=sys.stderr)
    sys.exit(0)


if __name__ == "__main__":
  define_flags()
  cli.run(main, data_errors=DATA_ERRORS, flags_parser=cli.parse_config_flags)
