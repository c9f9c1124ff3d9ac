"""Shared fixtures: a tiny synthetic dataset and a tiny config, built once per session."""

import os

import pytest

from fcam_jax import config_lib
from fcam_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir: str, **overrides):
  """The synthetic recipe shrunk so a whole run takes seconds on 2 CPU cores."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("synthetic_config",
                                                os.path.join(REPO, "configs", "synthetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(overrides.pop("arg", None))
  config.dataset.data_dir = data_dir
  s = config.dataset.synthetic
  s.image_size, s.train_size, s.val_size, s.test_size = 40, 48, 12, 12
  config.data.resize_size, config.data.crop_size, config.data.eval_size = 36, 32, 32
  config.data.read_threads = 1
  config.data.prefetch = 8
  config.stage1.epochs = 2
  config.stage1.batch_size = 16
  config.stage2.epochs = 1
  config.stage2.batch_size = 16
  config.eval.batch_size = 8
  config.eval.val_interval = 0.02
  config.eval.test_interval = 0.01
  config.log_every_steps = 2
  config.compilation_cache = ""  # tests count compilations (tests/test_no_recompile.py)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config_lib.validate(config)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, data_dir):
  """(workdir, config) of a tiny run of both stages, shared by the tests that read one
  (do not modify it: copy it)."""
  workdir = str(tmp_path_factory.mktemp("trained_workdir"))
  config = tiny_config(data_dir, stages="both", **{"stage1.epochs": 1, "stage2.epochs": 1})
  train.train_and_evaluate(config, workdir)
  return workdir, config
