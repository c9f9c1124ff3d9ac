"""grain input pipelines: augmented training batches and padded, masked eval batches.

Batches hold the raw uint8 images (normalization happens on device, and the CRF
loss needs the raw pixels), the labels and each image's index in its split.

Training order is a function of (seed, epoch) alone: epoch e is a permutation of
the split cut into global batches, and process p reads only its slice of each
global batch. The batch at a given step is therefore the same whatever the number
of processes, and resuming at step s of an epoch is a slice, not a replay.
"""

from typing import Dict, Iterator, Optional, Sequence

import grain
import numpy as np
from PIL import Image

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


class _Indexed:
  """source[order[i]] with the source index (and the padding mask, if any) attached."""

  def __init__(self, source: Sequence, order: np.ndarray, valid: Optional[np.ndarray] = None):
    self._source, self._order, self._valid = source, order, valid

  def __len__(self):
    return len(self._order)

  def __getitem__(self, i):
    index = int(self._order[i])
    item = self._source[index]
    out = {"image": item["image"], "label": np.int32(item["label"]), "index": np.int32(index)}
    if self._valid is not None:
      out["mask"] = self._valid[i]
    return out


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


def _finish(ds: grain.MapDataset, config) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads,
                                            prefetch_buffer_size=config.data.prefetch))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
  return it


def train_batches(split: Split, config, *, global_batch: int, epoch: int, start_step: int = 0,
                  seed: int = 0, process_index: int = 0, process_count: int = 1
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """This process's batches of `epoch`, from `start_step` on (drop remainder)."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  local = global_batch // process_count
  steps = steps_per_epoch(len(split), global_batch)
  order = np.random.default_rng([seed, epoch]).permutation(len(split))[:steps * global_batch]
  order = order.reshape(steps, process_count, local)[start_step:, process_index].reshape(-1)
  ds = grain.MapDataset.source(_Indexed(split.source, order))
  ds = ds.map(TrainTransform(config.data.resize_size, config.data.crop_size, seed, epoch))
  return iter(_finish(ds.batch(local, drop_remainder=True), config))


def eval_batches(split: Split, config, *, local_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """All of this process's share of `split`, padded to whole batches.

  Every process yields the same number of batches; `mask` is 0 on padding, so
  each image of the split counts exactly once over all processes.
  """
  shard = np.arange(process_index, len(split), process_count)
  padded = num_eval_batches(len(split), local_batch, process_count) * local_batch
  valid = np.arange(padded) < len(shard)
  order = np.concatenate([shard, np.full(padded - len(shard), shard[0] if len(shard) else 0)])
  ds = grain.MapDataset.source(_Indexed(split.source, order, valid))
  ds = ds.map(EvalTransform(config.data.eval_size))
  return iter(_finish(ds.batch(local_batch), config))


def num_eval_batches(num_examples: int, local_batch: int, process_count: int = 1) -> int:
  """Batches per process: ceil(ceil(n / processes) / local_batch), at least 1."""
  per_process = -(-num_examples // process_count)
  return max(1, -(-per_process // local_batch))
