r"""The real-data input path's throughput: JPEG decode, resize, random crop/flip, batching.

  python benchmarks/bench_input.py [--images=400] [--workers=0,1,2] [--batch=32] \
      [--batches=20] [--stage1_rate=1000] [--stage2_rate=500]

Generates a CUB-format release of JPEGs of CUB's typical size (500x375, quality 90;
`fcam_jax.data.cub_like`), converts it with `prepare_cub`, and reads the train split
through `pipeline.train_batches` at 224x224 (resize 256, random crop, flip; batch 32),
as training does, with `data.num_workers` grain worker processes (0: threads in the
main process). Prints images/s per setting, the images/s one worker process sustains
(decode + transform alone, no grain) and the workers that would feed an accelerator at
the given stage-1 / stage-2 step rates. benchmarks/README.md has the table.
"""

import math
import os
import sys
import tempfile
import time
from typing import Dict, List

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcam_jax import config_lib  # noqa: E402
from fcam_jax.data import cub_like  # noqa: E402
from fcam_jax.data import pipeline  # noqa: E402
from fcam_jax.data import prepare_cub  # noqa: E402
from fcam_jax.data import sources  # noqa: E402

_IMAGES = flags.DEFINE_integer("images", 400, "Images in the generated train split (about).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "data.num_workers values to time.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per setting (after the first).")
_STAGE1 = flags.DEFINE_float("stage1_rate", 1000.0, "Stage-1 step rate to feed, images/s.")
_STAGE2 = flags.DEFINE_float("stage2_rate", 500.0, "Stage-2 step rate to feed, images/s.")


def make_dataset(root: str, images: int, seed: int = 0):
  """A CUB-format release under `root` (about `images` train images) and the config
  that reads it (configs/cub.py's, 224x224)."""
  classes = 8
  cub = os.path.join(root, "CUB_200_2011")
  cub_like.write_release(cub, num_classes=classes, train_per_class=-(-images // classes),
                         test_per_class=2, seed=seed)
  metadata = os.path.join(root, "metadata")
  prepare_cub.convert(cub, metadata, val_per_class=1)
  config = config_lib.base_config()
  config.dataset.data_root = os.path.join(cub, "images")
  config.dataset.metadata_root = metadata
  config.model.num_classes = classes
  return config


def decode_rate(split: sources.Split, config, count: int) -> float:
  """Images/s of one process reading and transforming images (no grain, no batching)."""
  transform = pipeline.TrainTransform(config.data.resize_size, config.data.crop_size, 0, 0)
  n = min(count, len(split))
  start = time.perf_counter()
  for i in range(n):
    item = split.source[i]
    transform.map({"image": item["image"], "label": 0, "index": i})
  return n / (time.perf_counter() - start)


def train_rate(split: sources.Split, config, workers: int, batch: int, batches: int) -> float:
  """Images/s of `pipeline.train_batches` with `workers` worker processes (after the first
  batch, which includes starting the workers)."""
  config = config_lib.override(config, {"data.num_workers": workers}, "bench_input")
  it = pipeline.train_batches(split, config, global_batch=batch, epoch=0)
  next(it)
  start, n = time.perf_counter(), 0
  for _ in range(batches):
    try:
      n += len(next(it)["image"])
    except StopIteration:
      break
  return n / (time.perf_counter() - start)


def workers_needed(rate: float, per_worker: float) -> int:
  return max(1, math.ceil(rate / per_worker))


def measure(root: str, images: int, workers: List[int], batch: int, batches: int) -> Dict:
  config = make_dataset(root, images)
  split = sources.load_splits(config, ("train",))["train"]
  out = {"images": len(split), "decode_per_process": decode_rate(split, config, 100)}
  out["pipeline"] = {w: train_rate(split, config, w, batch, batches) for w in workers}
  return out


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as root:
    m = measure(root, _IMAGES.value, [int(w) for w in _WORKERS.value], _BATCH.value,
                _BATCHES.value)
  print(f"{m['images']} train JPEGs 500x375 q90 -> 224x224 crops, batch {_BATCH.value}; "
        f"{os.cpu_count()} CPUs")
  print("| data.num_workers | images/s |\n|---:|---:|")
  for w, rate in m["pipeline"].items():
    print(f"| {w} | {rate:.0f} |")
  per = m["decode_per_process"]
  print(f"one process, decode + resize + crop + flip alone: {per:.0f} images/s")
  for name, rate in (("stage 1", _STAGE1.value), ("stage 2", _STAGE2.value)):
    print(f"{name} at {rate:.0f} images/s needs {workers_needed(rate, per)} worker processes")


if __name__ == "__main__":
  app.run(main)
