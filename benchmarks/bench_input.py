r"""The real-data input path's throughput: JPEG decode, resize, random crop/flip, batching.

  python benchmarks/bench_input.py [--images=1024] [--workers=0,1,2] [--batch=32] \
      [--stage1_rate=1000] [--stage2_rate=500]

Writes a CUB-format release of JPEGs of CUB's typical size (500x375, quality 90;
`fcam_jax.data.cub_like`, a few distinct images copied under new names up to
`--images`: decoding costs the same), converts it with `prepare_cub`, and reads the
train split through `pipeline.train_batches` at 224x224 (resize 256, random crop,
flip; batch 32), as training does, for each `data.num_workers` (0: `read_threads`
threads in this process; N: N grain worker processes). For each it prints the images/s
in steady state (after each worker's first two batches, so that the workers' start
does not count) and the time to the first batch (the start every epoch and every
evaluation pays: the workers are spawned per pipeline). It also prints what one thread
sustains reading and transforming alone (no grain), in images/s and in images per
CPU-second (one core's rate, whatever else the machine runs: the per-worker rate of
`data.num_workers=-1`'s rule), and the worker processes that would feed the given
stage-1 / stage-2 step rates. benchmarks/README.md has the table;
`benchmarks/accelerator_check.py` runs `measure` on the accelerator's machine.
"""

import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, Sequence, Tuple

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcam_jax import config_lib  # noqa: E402
from fcam_jax.data import cub_like  # noqa: E402
from fcam_jax.data import pipeline  # noqa: E402
from fcam_jax.data import sources  # noqa: E402

_IMAGES = flags.DEFINE_integer("images", 1024, "Images in the train split (at least).")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "data.num_workers values to time.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_THREADS = flags.DEFINE_integer("read_threads", 4, "config.data.read_threads.")
_MORE_THREADS = flags.DEFINE_list("more_threads", [], "More read_threads values to time with "
                                  "data.num_workers=0.")
_STAGE1 = flags.DEFINE_float("stage1_rate", 1000.0, "Stage-1 step rate to feed, images/s.")
_STAGE2 = flags.DEFINE_float("stage2_rate", 500.0, "Stage-2 step rate to feed, images/s.")
_ROOT = flags.DEFINE_string("root", "", "Folder for the release (default: a temporary one).")

CLASSES = 8


def write_release(root: str, train_images: int, *, distinct_per_class: int = 4,
                  test_per_class: int = 2, val_per_class: int = 1,
                  size: Tuple[int, int] = (500, 375), quality: int = 90,
                  classes: int = CLASSES, seed: int = 0) -> Tuple[str, str]:
  """A CUB_200_2011-format release under `root/CUB_200_2011` with at least `train_images`
  train images (after `val_per_class` per class go to val) and its metadata under
  `root/metadata`; returns (cub_root, metadata_root).

  `distinct_per_class` train images per class are rendered (0.1 s each at 500x375 on the
  development VM); the train list is then filled with copies of them under new names and
  ids (a file read and decoded like any other).
  """
  cub = os.path.join(root, "CUB_200_2011")
  n = cub_like.write_release(cub, num_classes=classes, train_per_class=distinct_per_class,
                             test_per_class=test_per_class, size=size, quality=quality,
                             seed=seed)
  wanted = train_images + classes * val_per_class
  tables = {name: open(os.path.join(cub, name)).read().splitlines()
            for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt",
                         "bounding_boxes.txt")}
  train_ids = [line.split()[0] for line in tables["train_test_split.txt"] if line.split()[1] == "1"]
  rows = {name: {line.split()[0]: line.split(None, 1)[1] for line in lines}
          for name, lines in tables.items()}
  for k in range(n + 1, n + 1 + max(0, wanted - len(train_ids))):
    src = train_ids[(k - n - 1) % len(train_ids)]
    rel = rows["images.txt"][src]
    copy = f"{rel[:-4]}_copy{k:05d}.jpg"
    shutil.copyfile(os.path.join(cub, "images", rel), os.path.join(cub, "images", copy))
    tables["images.txt"].append(f"{k} {copy}")
    tables["image_class_labels.txt"].append(f"{k} {rows['image_class_labels.txt'][src]}")
    tables["train_test_split.txt"].append(f"{k} 1")
    tables["bounding_boxes.txt"].append(f"{k} {rows['bounding_boxes.txt'][src]}")
  cub_like.write_tables(cub, tables)
  # Imported here: its absl flags (--out, ...) would clash with an importer's.
  from fcam_jax.data import prepare_cub  # pylint: disable=g-import-not-at-top
  metadata = os.path.join(root, "metadata")
  prepare_cub.convert(cub, metadata, val_per_class=val_per_class)
  return cub, metadata


def dataset_config(cub: str, metadata: str, classes: int = CLASSES, read_threads: int = 4):
  """configs/cub.py's config (224x224) reading the release."""
  config = config_lib.base_config()
  config.dataset.data_root = os.path.join(cub, "images")
  config.dataset.metadata_root = metadata
  config.model.num_classes = classes
  config.data.read_threads = read_threads
  return config


def decode_rate(split: sources.Split, config, count: int) -> Tuple[float, float]:
  """(images/s, images per CPU-second) of this process reading and transforming images in
  one thread (no grain, no batching). The second is what one core sustains, whatever else
  the machine runs."""
  transform = pipeline.TrainTransform(config.data.resize_size, config.data.crop_size, 0, 0)
  n = min(count, len(split))
  start, cpu = time.perf_counter(), time.process_time()
  for i in range(n):
    item = split.source[i]
    transform.map({"image": item["image"], "label": 0, "index": i})
  return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def _skipped(workers: int) -> int:
  """Batches not timed: each worker's first (they arrive together, after the start) and
  the one it has buffered meanwhile (grain's per-worker buffer holds one)."""
  return 2 * max(1, workers)


def min_batches(workers: int) -> int:
  """Batches an epoch needs for `train_rate` to time `workers`."""
  return _skipped(workers) + max(2, workers)


def train_rate(split: sources.Split, config, workers: int, batch: int,
               batches: int = 0) -> Dict[str, float]:
  """`pipeline.train_batches` with `workers` (data.num_workers): {'images_per_s': steady
  state, 'first_batch_s': time to the first batch, 'batches': batches read}.

  Steady state: from the arrival of batch `_skipped(workers)` to the last, `batches`
  (default: the epoch's) in all.
  """
  config = config_lib.override(config, {"data.num_workers": workers}, "bench_input")
  steps = pipeline.steps_per_epoch(len(split), batch)
  batches = min(batches or steps, steps)
  skip = _skipped(workers)
  if batches < min_batches(workers):
    raise ValueError(f"{batches} batches are too few to time {workers} workers: "
                     f"use at least {min_batches(workers) * batch} train images")
  start = time.perf_counter()
  it = pipeline.train_batches(split, config, global_batch=batch, epoch=0)
  arrivals = []
  for _ in range(batches):
    next(it)
    arrivals.append(time.perf_counter() - start)
  it.close()
  steady = (batches - skip) * batch / (arrivals[-1] - arrivals[skip - 1])
  return {"images_per_s": steady, "first_batch_s": arrivals[0], "batches": batches}


def workers_needed(rate: float, per_worker: float) -> int:
  return max(1, math.ceil(rate / per_worker))


def measure(cub: str, metadata: str, workers: Sequence[int], batch: int = 32,
            read_threads: int = 4, decode_images: int = 100,
            thread_counts: Sequence[int] = ()) -> Dict:
  """The figures of this benchmark for an existing release (see `write_release`);
  `thread_counts`: more `read_threads` values to time with data.num_workers=0 (threads
  have no start to pay each epoch, but share one interpreter)."""
  config = dataset_config(cub, metadata, read_threads=read_threads)
  split = sources.load_splits(config, ("train",))["train"]
  wall, per_cpu_s = decode_rate(split, config, decode_images)
  out = {"train_images": len(split), "batch": batch, "read_threads": read_threads,
         "cpus": pipeline.available_cpus(), "load_average": os.getloadavg()[0],
         "decode_per_process": wall, "decode_per_cpu_second": per_cpu_s}
  out["pipeline"] = {int(w): train_rate(split, config, int(w), batch) for w in workers}
  out["threads"] = {int(n): train_rate(split, config_lib.override(
      config, {"data.read_threads": int(n)}, "bench_input"), 0, batch) for n in thread_counts}
  # What one worker process sustains on a core of its own: the images per CPU-second of
  # the bare read + transform (its read_threads overlap file reads; with cores to spare
  # they may take more than one: the 1-worker pipeline's rate shows how much).
  out["per_worker"] = out["decode_per_cpu_second"]
  return out


def table(m: Dict, rates: Dict[str, float]) -> str:
  """Markdown table of `measure`'s figures, and the workers `rates` need."""
  lines = [f"{m['train_images']} train JPEGs 500x375 q90 -> 224x224 crops (resize 256, crop, "
           f"flip), batch {m['batch']}, read_threads {m['read_threads']}, {m['cpus']} CPUs, "
           f"load average {m['load_average']:.1f}",
           "", "| data.num_workers | images/s (steady) | first batch s |", "|---:|---:|---:|"]
  for w, r in m["pipeline"].items():
    label = f"{w} (threads)" if w == 0 else str(w)
    lines.append(f"| {label} | {r['images_per_s']:.0f} | {r['first_batch_s']:.1f} |")
  for n, r in m.get("threads", {}).items():
    lines.append(f"| 0, read_threads={n} | {r['images_per_s']:.0f} | {r['first_batch_s']:.1f} |")
  lines += ["", f"one process, read + decode + resize + crop + flip alone, one thread: "
                f"{m['decode_per_process']:.0f} images/s, {m['decode_per_cpu_second']:.0f} "
                "images per CPU-second (= per worker process in the rule below)"]
  for name, rate in rates.items():
    need = workers_needed(rate, m["per_worker"])
    lines.append(f"{name} at {rate:.0f} images/s needs {need} worker processes at this "
                 f"per-worker rate ({min(need, m['cpus'] - 1)} with the {m['cpus']} CPUs here)")
  lines.append(f"data.num_workers=-1 (auto: {pipeline.AUTO_TARGET_RATE:.0f} / "
               f"{pipeline.AUTO_PER_WORKER_RATE:.0f} images/s) on an accelerator with these "
               f"CPUs: {pipeline.auto_workers('gpu', m['cpus'])} workers")
  return "\n".join(lines)


def main(argv):
  del argv
  workers = [int(w) for w in _WORKERS.value]
  need = min_batches(max(workers)) * _BATCH.value
  images = max(_IMAGES.value, need)
  root = _ROOT.value or tempfile.mkdtemp(prefix="bench_input_")
  try:
    t0 = time.time()
    cub, metadata = write_release(root, images)
    print(f"release written in {time.time() - t0:.0f}s", flush=True)
    m = measure(cub, metadata, workers, _BATCH.value, _THREADS.value,
                thread_counts=[int(n) for n in _MORE_THREADS.value])
  finally:
    if not _ROOT.value:
      shutil.rmtree(root, ignore_errors=True)
  print(table(m, {"stage 1": _STAGE1.value, "stage 2": _STAGE2.value}))


if __name__ == "__main__":
  app.run(main)
