"""grain input pipelines: augmented training batches and padded, masked eval batches.

Batches hold the raw uint8 images (normalization happens on device, and the CRF
loss needs the raw pixels), the labels and each image's index in its split.

Training order is a function of (seed, epoch) alone: epoch e is a permutation of
the split cut into global batches, and process p reads only its slice of each
global batch. The batch at a given step is therefore the same whatever the number
of processes, and resuming at step s of an epoch is a slice, not a replay.

An image the source cannot read (images.ImageError) stops the iteration with an
error naming it, before the batch that holds it is yielded; with
`config.data.on_error='skip'` it is replaced, in training, by the next readable image
of the epoch's order (so batches keep their shape and the same order on any number
of processes), and in evaluation by a masked-out entry (mask 0: it counts zero times,
every readable image once). Either way it is logged once in the split's SkipLog.

Where the work runs: `config.data.num_workers` grain worker processes (spawned, the
dataset sent by cloudpickle; each reads and transforms whole batches, in order), or
with 0 `config.data.read_threads` threads of this process. -1 (the default) is `auto`,
resolved when a pipeline starts (`num_workers`): 0 on the CPU backend, else enough
workers for the accelerator's step rate (benchmarks/README.md, "Input pipeline").
"""

import math
import os
from typing import Dict, Iterable, Iterator, Optional, Sequence

from absl import flags
import grain
import numpy as np
from PIL import Image

from fcam_jax.data import images
from fcam_jax.data import sources
from fcam_jax.data.sources import Split


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
  steps = num_examples // global_batch
  if steps == 0:
    raise ValueError(f"the training split has {num_examples} images, fewer than one "
                     f"global batch of {global_batch}")
  return steps


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize to size x size (aspect not kept), as torchvision's PIL Resize."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _read(source: Sequence, index: int) -> Dict:
  item = source[index]
  return {"image": item["image"], "label": np.int32(item["label"]), "index": np.int32(index)}


def _hint(e: images.ImageError) -> images.ImageError:
  return images.ImageError(f"{e}\n{sources.SKIP_HINT}")


class _TrainItems:
  """source[perm[g]] for this process's global positions g of the epoch.

  With `skip`, an unreadable image is replaced by the next readable one in the
  epoch's order, perm[g + 1], perm[g + 2], ... (a function of the epoch alone, so
  the same on every process count); `_bad` is its index (-1: none).
  """

  def __init__(self, source: Sequence, perm: np.ndarray, positions: np.ndarray, skip: bool):
    self._source, self._perm, self._positions, self._skip = source, perm, positions, skip

  def __len__(self):
    return len(self._positions)

  def __getitem__(self, i):
    g = int(self._positions[i])
    try:
      item = _read(self._source, int(self._perm[g]))
    except images.ImageError as e:
      if not self._skip:
        raise _hint(e) from e
    else:
      return {**item, "_bad": np.int32(-1)} if self._skip else item
    for k in range(1, len(self._perm)):
      try:
        return {**_read(self._source, int(self._perm[(g + k) % len(self._perm)])),
                "_bad": np.int32(self._perm[g])}
      except images.ImageError:
        continue
    raise images.ImageError(f"none of the {len(self._perm)} images of the split can be read")


class _EvalItems:
  """source[order[i]] with `mask` (0: padding); with `skip`, an unreadable image is an
  entry with mask 0 and `_bad` its index (-1: none)."""

  def __init__(self, source: Sequence, order: np.ndarray, valid: np.ndarray, skip: bool):
    self._source, self._order, self._valid, self._skip = source, order, valid, skip

  def __len__(self):
    return len(self._order)

  def __getitem__(self, i):
    index, valid = int(self._order[i]), self._valid[i]
    try:
      item = {**_read(self._source, index), "mask": valid}
    except images.ImageError as e:
      if not self._skip:
        raise _hint(e) from e
      return {"image": np.zeros((1, 1, 3), np.uint8), "label": np.int32(0),
              "index": np.int32(index), "mask": np.bool_(False),
              "_bad": np.int32(index if valid else -1)}
    return {**item, "_bad": np.int32(-1)} if self._skip else item


def _log_unreadable(batches: Iterable[Dict[str, np.ndarray]], split: Split):
  """The batches without `_bad`, whose images are logged in the split's SkipLog."""
  for batch in batches:
    bad = batch.pop("_bad")
    for index in np.unique(bad[bad >= 0]):
      split.unreadable(int(index))
    yield batch


class TrainTransform(grain.transforms.Map):
  """Resize to resize_size, random crop_size crop, random horizontal flip."""

  def __init__(self, resize_size: int, crop_size: int, seed: int, epoch: int):
    self.resize_size, self.crop_size, self.seed, self.epoch = resize_size, crop_size, seed, epoch

  def map(self, item: Dict) -> Dict:
    rng = np.random.default_rng([self.seed, self.epoch, int(item["index"])])
    image = _resize(item["image"], self.resize_size)
    top, left = rng.integers(0, self.resize_size - self.crop_size + 1, size=2)
    image = image[top:top + self.crop_size, left:left + self.crop_size]
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return {**item, "image": np.ascontiguousarray(image)}


class EvalTransform(grain.transforms.Map):
  """Resize to eval_size; padding entries keep their (repeated) image, mask 0."""

  def __init__(self, eval_size: int):
    self.eval_size = eval_size

  def map(self, item: Dict) -> Dict:
    return {**item, "image": _resize(item["image"], self.eval_size)}


# `data.num_workers=-1` (auto), from benchmarks/README.md "Input pipeline": the images/s
# the input path must sustain on an accelerator (the stage-1 step's target on one H100,
# bf16; stage 2 needs half) and what one worker process sustains on a core of its own
# (224x224 crops of CUB-like 500x375 JPEGs: 350-370 images per CPU-second on the
# development VM's EPYC, the generated images and a photo alike; 250 leaves ~30 % for
# grain's transfer of the batches and slower cores).
AUTO = -1
AUTO_TARGET_RATE = 1000.0
AUTO_PER_WORKER_RATE = 250.0


def available_cpus() -> int:
  """The CPUs this process may run on (its affinity mask, else os.cpu_count())."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def auto_workers(backend: str, cpus: int, target_rate: float = AUTO_TARGET_RATE,
                 per_worker_rate: float = AUTO_PER_WORKER_RATE) -> int:
  """The rule of `data.num_workers=-1`: 0 on the CPU backend (worker processes would
  take the cores XLA computes on: threads in this process read instead); elsewhere
  min(cpus - 1, ceil(target_rate / per_worker_rate)), leaving one core to this process
  (it feeds the device and scores the evaluation's maps)."""
  if backend == "cpu":
    return 0
  return max(0, min(cpus - 1, math.ceil(target_rate / per_worker_rate)))


def num_workers(config, backend: Optional[str] = None) -> int:
  """`config.data.num_workers` with -1 (auto) resolved by `auto_workers` for `backend`
  (default: JAX's default backend)."""
  value = int(config.data.num_workers)
  if value != AUTO:
    return value
  if backend is None:
    import jax  # pylint: disable=g-import-not-at-top
    backend = jax.default_backend()
  return auto_workers(backend, available_cpus())


def _iterate(it: grain.DatasetIterator) -> Iterator:
  """`it`'s elements; closes it at the end (or when the consumer drops this generator), so
  that worker processes stop with their epoch, not whenever the iterator is collected."""
  try:
    yield from it
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()


def _finish(ds: grain.MapDataset, config) -> Iterator:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads,
                                            prefetch_buffer_size=config.data.prefetch))
  workers = num_workers(config)
  if workers > 0:
    # grain reads its own absl flags when it starts workers; a caller that never parsed
    # flags (a library user, a notebook, a test) runs with their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return _iterate(iter(it))


def train_batches(split: Split, config, *, global_batch: int, epoch: int, start_step: int = 0,
                  seed: int = 0, process_index: int = 0, process_count: int = 1
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """This process's batches of `epoch`, from `start_step` on (drop remainder)."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  local = global_batch // process_count
  steps = steps_per_epoch(len(split), global_batch)
  perm = np.random.default_rng([seed, epoch]).permutation(len(split))
  positions = np.arange(steps * global_batch).reshape(steps, process_count, local)
  positions = positions[start_step:, process_index].reshape(-1)
  skip = sources.on_error(config) == "skip"
  ds = grain.MapDataset.source(_TrainItems(split.source, perm, positions, skip))
  ds = ds.map(TrainTransform(config.data.resize_size, config.data.crop_size, seed, epoch))
  batches = _finish(ds.batch(local, drop_remainder=True), config)
  return _log_unreadable(batches, split) if skip else batches


def eval_batches(split: Split, config, *, local_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """All of this process's share of `split`, padded to whole batches.

  Every process yields the same number of batches; `mask` is 0 on padding (and on
  unreadable images under on_error='skip'), so each image of the split counts exactly
  once over all processes.
  """
  shard = np.arange(process_index, len(split), process_count)
  padded = num_eval_batches(len(split), local_batch, process_count) * local_batch
  valid = np.arange(padded) < len(shard)
  order = np.concatenate([shard, np.full(padded - len(shard), shard[0] if len(shard) else 0)])
  skip = sources.on_error(config) == "skip"
  ds = grain.MapDataset.source(_EvalItems(split.source, order, valid, skip))
  ds = ds.map(EvalTransform(config.data.eval_size))
  batches = _finish(ds.batch(local_batch), config)
  return _log_unreadable(batches, split) if skip else batches


def num_eval_batches(num_examples: int, local_batch: int, process_count: int = 1) -> int:
  """Batches per process: ceil(ceil(n / processes) / local_batch), at least 1."""
  per_process = -(-num_examples // process_count)
  return max(1, -(-per_process // local_batch))
