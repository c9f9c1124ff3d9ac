"""grain pipelines: augmentation, determinism, per-process shards, resume, padded eval."""

import numpy as np
from PIL import Image
import pytest

from fcam_jax.data import pipeline
from fcam_jax.data.records import ImageRecord
from fcam_jax.data.sources import Split
from tests.conftest import tiny_config


class _Source:
  """Images whose pixels encode their index, so crops can be traced back."""

  def __init__(self, n, size=20):
    self.n, self.size = n, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    rng = np.random.default_rng(i)
    return {"image": rng.integers(0, 256, (self.size, self.size + 3, 3), dtype=np.uint8),
            "label": i % 3}


def _split(n):
  return Split("x", _Source(n), [ImageRecord(i, f"{i}", "", i % 3, 23, 20) for i in range(n)])


@pytest.fixture
def config(tmp_path):
  c = tiny_config(str(tmp_path))
  c.data.resize_size, c.data.crop_size, c.data.eval_size = 16, 12, 14
  return c


def _epoch(split, config, **kw):
  return list(pipeline.train_batches(split, config, **kw))


def test_train_batches_are_crops_of_the_resized_image(config):
  split = _split(20)
  batches = _epoch(split, config, global_batch=8, epoch=0)
  assert len(batches) == 2  # drop remainder
  b = batches[0]
  assert b["image"].shape == (8, 12, 12, 3) and b["image"].dtype == np.uint8
  flips = 0
  for img, idx, label in zip(b["image"], b["index"], b["label"]):
    assert label == idx % 3
    full = np.asarray(Image.fromarray(split.source[idx]["image"]).resize((16, 16), Image.BILINEAR))
    found = []
    for flip in (False, True):
      cand = img[:, ::-1] if flip else img
      for top in range(5):
        for left in range(5):
          if np.array_equal(full[top:top + 12, left:left + 12], cand):
            found.append(flip)
    assert found, f"batch image {idx} is not a crop of its resized source"
    flips += found[0]
  assert 0 < flips < 8 or len(b["image"]) < 4


def test_order_depends_on_seed_and_epoch_only(config):
  split = _split(32)
  a = _epoch(split, config, global_batch=8, epoch=1, seed=3)
  b = _epoch(split, config, global_batch=8, epoch=1, seed=3)
  c = _epoch(split, config, global_batch=8, epoch=2, seed=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))
  seen = np.concatenate([x["index"] for x in a])
  assert len(set(seen.tolist())) == 32  # a permutation: no repeats within an epoch


@pytest.mark.parametrize("processes", [2, 4])
def test_process_shards_rebuild_the_global_batch(config, processes):
  split = _split(40)
  whole = _epoch(split, config, global_batch=8, epoch=0)
  shards = [_epoch(split, config, global_batch=8, epoch=0, process_index=p, process_count=processes)
            for p in range(processes)]
  for step, batch in enumerate(whole):
    parts = [s[step] for s in shards]
    assert all(len(p["index"]) == 8 // processes for p in parts)
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), batch["index"])
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), batch["image"])


def test_resume_mid_epoch_is_the_tail_of_the_epoch(config):
  split = _split(40)
  whole = _epoch(split, config, global_batch=8, epoch=4)
  tail = _epoch(split, config, global_batch=8, epoch=4, start_step=3)
  assert len(tail) == len(whole) - 3
  for x, y in zip(whole[3:], tail):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_too_small_a_split_is_a_clear_error(config):
  with pytest.raises(ValueError, match="fewer than one global batch"):
    _epoch(_split(5), config, global_batch=8, epoch=0)


@pytest.mark.parametrize("n,processes,batch", [(13, 1, 4), (13, 2, 4), (13, 3, 2), (2, 3, 4), (8, 2, 4)])
def test_eval_counts_every_image_exactly_once(config, n, processes, batch):
  split = _split(n)
  seen, counts = [], []
  for p in range(processes):
    batches = list(pipeline.eval_batches(split, config, local_batch=batch, process_index=p,
                                         process_count=processes))
    counts.append(len(batches))
    for b in batches:
      assert b["image"].shape == (batch, 14, 14, 3)
      seen.extend(b["index"][b["mask"]].tolist())
  assert len(set(counts)) == 1  # every process runs the same number of eval steps
  assert counts[0] == pipeline.num_eval_batches(n, batch, processes)
  assert sorted(seen) == list(range(n))


def test_eval_image_is_the_resized_source(config):
  split = _split(3)
  b = next(pipeline.eval_batches(split, config, local_batch=4))
  ref = np.asarray(Image.fromarray(split.source[1]["image"]).resize((14, 14), Image.BILINEAR))
  np.testing.assert_array_equal(b["image"][1], ref)
  assert b["mask"].tolist() == [True, True, True, False]
