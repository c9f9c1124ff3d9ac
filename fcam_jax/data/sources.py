"""The splits of a dataset as random-access sources plus their ground truth.

A `Split` is what the pipeline reads (`source[i] -> {'image': uint8 HWC, 'label'}`)
and what the evaluators score against (`records`, `mask_loader`). Two kinds:
the built-in synthetic TFDS dataset and the wsolevaluation metadata layout
(CUB, OpenImages, ILSVRC) read from image files.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from fcam_jax.data.records import ImageRecord

MaskLoader = Callable[[int], Tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class Split:
  """One split: a random-access image source and its ground truth."""
  name: str
  source: Sequence  # source[i] -> {'image': uint8 (H, W, 3), 'label': int}
  records: List[ImageRecord]
  mask_loader: Optional[MaskLoader] = None  # index -> (fg, ignore) at the map size
  has_boxes: bool = True

  def __len__(self):
    return len(self.source)


class _TfdsImages:
  """A TFDS array_record source reduced to {'image', 'label'}."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    ex = self._source[int(i)]
    return {"image": ex["image"], "label": int(ex["label"])}


def _synthetic_split(builder, name: str, map_size: int) -> Split:
  source = builder.as_data_source(split=name)
  records, masks = [], []
  for i in range(len(source)):
    ex = source[i]
    h, w = ex["image"].shape[:2]
    records.append(ImageRecord(index=i, image_id=ex["image_id"].decode(), path="",
                               label=int(ex["label"]), width=w, height=h,
                               boxes=np.asarray(ex["boxes"], np.float32)))
    masks.append(cv2.resize(ex["mask"][..., 0], (map_size, map_size),
                            interpolation=cv2.INTER_NEAREST) > 0)
  masks = np.stack(masks)
  no_ignore = np.zeros((map_size, map_size), bool)
  return Split(name, _TfdsImages(source), records,
               mask_loader=lambda i: (masks[i], no_ignore), has_boxes=True)


def load_synthetic(config, names: Sequence[str] = ("train", "val", "test")) -> Dict[str, Split]:
  from fcam_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  s = config.dataset.synthetic
  builder = synthetic.prepare(config.dataset.data_dir, config.model.num_classes, s.image_size,
                              (s.train_size, s.val_size, s.test_size), s.seed)
  splits = {}
  for name in names:
    if name == "train":  # training needs no ground truth: skip decoding the masks.
      src = builder.as_data_source(split="train")
      splits[name] = Split(name, _TfdsImages(src), records=[])
    else:
      splits[name] = _synthetic_split(builder, name, config.data.eval_size)
  return splits


class _ImageFiles:
  """Images read from disk by path, converted to RGB."""

  def __init__(self, records: List[ImageRecord]):
    self._records = records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    from fcam_jax.data import images  # pylint: disable=g-import-not-at-top
    rec = self._records[int(i)]
    return {"image": images.load_rgb(rec.path), "label": rec.label}


def load_metadata(config, names: Sequence[str] = ("train", "val", "test")) -> Dict[str, Split]:
  from fcam_jax.data import metadata  # pylint: disable=g-import-not-at-top
  d = config.dataset
  splits = {}
  for name in names:
    records = metadata.read_split(d.name, d.metadata_root, name, d.data_root,
                                  mask_root=d.mask_root)
    loader = None
    if d.name == "OpenImages" and name != "train":
      loader = metadata.openimages_mask_loader(records, config.data.eval_size)
    splits[name] = Split(name, _ImageFiles(records), records, mask_loader=loader,
                         has_boxes=d.name != "OpenImages")
  return splits


def load_splits(config, names: Sequence[str] = ("train", "val", "test")) -> Dict[str, Split]:
  """The splits of `config.dataset` (generating the synthetic dataset if needed)."""
  if config.dataset.name == "synthetic":
    return load_synthetic(config, names)
  return load_metadata(config, names)
