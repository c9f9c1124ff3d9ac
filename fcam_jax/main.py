"""Trains and evaluates F-CAM: `python -m fcam_jax.main --config=configs/cub.py --workdir=DIR`.

`--config=configs/cub.py:vgg16,gradcampp` picks the backbone and the CAM method;
`--config.stage1.epochs=5` (any key) overrides a value. Running the same command
again resumes from the last checkpoint.
"""

import importlib.util
import logging as logging_lib
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from fcam_jax import config_lib

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file, optionally with ':backbone,method,stage'.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _load_config_file(argv):
  """get_config(arg) of the `--config=file.py[:arg]` in argv (for error messages)."""
  spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("fcam_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _unknown_override(argv) -> str:
  """The first `--config.a.b=...` whose key path does not exist, or ''."""
  config = None
  for arg in argv[1:]:
    m = re.match(r"--config\.([\w.]+)(=|$)", arg)
    if not m:
      continue
    if config is None:
      config = _load_config_file(argv)
    node, path = config, m.group(1).split(".")
    for i, part in enumerate(path):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        parent = ".".join(["config"] + path[:i])
        keys = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
        return f"unknown config key 'config.{'.'.join(path[:i + 1])}' in {arg!r}; {parent} has: {keys}"
  return ""


def parse_flags(argv):
  """absl's flag parsing, with one-line messages for bad configs instead of tracebacks."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].partition(":")[0]
      if not os.path.isfile(path):
        fail(f"config file not found: {path}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # config_flags embeds get_config's traceback: keep its last line.
      last = [l for l in message.splitlines() if l.strip()][-1]
      message = re.sub(r"^[\w.]*(ConfigError|Error|Exception): ", "", last.strip())
    fail(message)
  except config_lib.ConfigError as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    try:
      message = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      message = ""
    fail(message or f"{type(e).__name__}: {e}")


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO records of orbax and tfds (a dozen lines per checkpoint save)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    config = CONFIG.value
    config_lib.validate(config)
  except (config_lib.ConfigError, FileNotFoundError, ImportError, AttributeError) as e:
    fail(str(e))
  from fcam_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize_from_config(config)
  except ValueError as e:
    fail(str(e))
  logging.info("JAX: %d processes, %d devices (%s)", jax.process_count(), jax.device_count(),
               jax.devices()[0].platform)
  from fcam_jax import checkpoint, train, weights  # pylint: disable=g-import-not-at-top
  from fcam_jax.data import images, metadata  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(config, WORKDIR.value)
  except train.Preempted as e:  # a checkpoint is saved: exit 0 so schedulers requeue
    logging.warning("%s", e)
    print(str(e), file=sys.stderr)
    sys.exit(0)
  except (config_lib.ConfigError, checkpoint.CheckpointNotFoundError, FileNotFoundError,
          weights.PretrainedError, metadata.MetadataError, images.ImageError,
          train.NonFiniteError, OSError) as e:
    fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
