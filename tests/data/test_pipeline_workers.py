"""grain worker processes (`data.num_workers`): the same batches as threads, and `auto`.

Each pipeline with workers spawns its processes (a few seconds here): the tests keep
to one worker and a handful of tiny batches.
"""

import math

import numpy as np
import pytest

from fcam_jax import config_lib
from fcam_jax.data import cub_like
from fcam_jax.data import pipeline
from fcam_jax.data import prepare_cub
from fcam_jax.data import sources
from tests.conftest import tiny_config


def test_auto_rule_as_documented():
  assert config_lib.base_config().data.num_workers == pipeline.AUTO == -1
  # The CPU backend: XLA computes on the cores, threads read.
  assert pipeline.auto_workers("cpu", 64) == 0
  need = math.ceil(pipeline.AUTO_TARGET_RATE / pipeline.AUTO_PER_WORKER_RATE)
  assert pipeline.auto_workers("gpu", 64) == need
  assert pipeline.auto_workers("tpu", need + 1) == need
  assert pipeline.auto_workers("gpu", 3) == 2  # one CPU left to the process feeding the device
  assert pipeline.auto_workers("gpu", 1) == 0
  assert pipeline.auto_workers("gpu", 64, target_rate=500, per_worker_rate=100) == 5
  config = config_lib.base_config()
  assert pipeline.num_workers(config, backend="cpu") == 0
  assert pipeline.num_workers(config, backend="gpu") == min(pipeline.available_cpus() - 1, need)
  assert pipeline.num_workers(config) == 0  # the tests run on the CPU backend
  config.data.num_workers = 3
  assert pipeline.num_workers(config, backend="cpu") == 3  # explicit values are kept


def test_num_workers_below_auto_is_refused(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="num_workers"):
    config_lib.override(tiny_config(str(tmp_path)), {"data.num_workers": -2})


def _batches(split, config, workers):
  """(train batches of epoch 1, eval batches) of `split`."""
  config = config_lib.override(config, {"data.num_workers": workers})
  return (list(pipeline.train_batches(split, config, global_batch=4, epoch=1)),
          list(pipeline.eval_batches(split, config, local_batch=4)))


def _assert_same(a, b):
  a, b = a[0] + a[1], b[0] + b[1]
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_one_worker_process_gives_the_batches_of_threads_image_files(tmp_path):
  """Image files (the metadata layout), with an unreadable JPEG under on_error=skip:
  the replacement in training, the masked entry in evaluation and the skip log."""
  cub = tmp_path / "CUB_200_2011"
  cub_like.write_release(str(cub), num_classes=2, train_per_class=6, test_per_class=1,
                         size=(40, 30))
  prepare_cub.convert(str(cub), str(tmp_path / "metadata"), val_per_class=1)
  config = tiny_config(str(tmp_path))
  config.dataset.name = "CUB"
  config.dataset.data_root = str(cub / "images")
  config.dataset.metadata_root = str(tmp_path / "metadata")
  config.data.on_error = "skip"
  config = config_lib.validate(config)
  splits = sources.load_splits(config, ("train",))
  bad = splits["train"].records[2]
  with open(bad.path, "wb") as f:
    f.write(b"not a jpeg")
  logs = {}
  out = {}
  for workers in (0, 1):
    split = sources.load_splits(config, ("train",))["train"]
    out[workers] = _batches(split, config, workers)
    logs[workers] = [(e["image_id"], e["found"]) for e in split.skipped]
  _assert_same(out[0], out[1])
  assert logs[0] == logs[1] == [(bad.image_id, "read")]
  train, evaluation = out[1]
  assert not any(bad.index in b["index"] for b in train)  # replaced by the next readable one
  masks = np.concatenate([b["mask"][b["index"] == bad.index] for b in evaluation])
  assert len(masks) == 1 and not masks.any()  # counted zero times


def test_one_worker_process_gives_the_batches_of_threads_tfds(data_dir):
  """The synthetic TFDS source (array_record), sent to the worker by cloudpickle."""
  config = tiny_config(data_dir)
  split = sources.load_splits(config, ("train",))["train"]
  _assert_same(_batches(split, config, 0), _batches(split, config, 1))
