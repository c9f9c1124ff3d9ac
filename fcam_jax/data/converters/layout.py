"""Writes one split of Items in the metadata layout (docs/design.md §8), checks it, installs it.

Everything is written to staging folders first (`<out>/.convert-<split>-<pid>/` and, for
masks, `<masks>/.convert-<split>-<pid>/`), read back with fcam_jax.data.metadata.read_split
(every image and mask file opened), and only then moved into place: the class index
(through a temporary file and a rename), then `<out>/<split>/` and `<masks>/<split>/`,
each replacing the folder a previous run wrote. A run that fails leaves the previous
output as it was. The images left out are listed in `<out>/<split>_left_out.json`.
"""

import collections
import dataclasses
import json
import os
import shutil
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

from fcam_jax.data import metadata
from fcam_jax.data.converters.classes import TRAIN, ClassIndex, atomic_write
from fcam_jax.data.converters.common import ConvertError, Item, LeftOut, number_text

IGNORE_SUFFIX = "_ignore.png"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Written:
  """What a split holds once written (for the summary line)."""
  split: str
  images: int
  boxes: int
  masks: int
  ignores: int
  localization: str  # 'boxes' | 'masks' | '' (none written) ...
  why_none: str  # ... and why
  classes_used: int
  classes: int
  classes_added: int
  left_out: Dict[str, int]  # kind -> count
  left_out_path: str
  split_dir: str

  def summary(self) -> str:
    if self.localization == "boxes":
      truth = _count(self.boxes, "box", "boxes")
    elif self.localization == "masks":
      truth = f"{_count(self.masks, 'mask')} ({_count(self.ignores, 'ignore mask')})"
    else:
      truth = f"no localization.txt ({self.why_none})"
    added = f", {self.classes_added} new" if self.classes_added else ""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.left_out.items()))
    return (f"{self.split}: {_count(self.images, 'image')}, {truth}, "
            f"{_count(self.classes_used, 'class', 'classes')} (class_names.txt: {self.classes}"
            f"{added}), {sum(self.left_out.values())} left out ({kinds + '; ' if kinds else ''}"
            f"listed in {self.left_out_path}) -> {self.split_dir}")


def _count(n: int, one: str, many: str = "") -> str:
  return f"{n} {one if n == 1 else (many or one + 's')}"


def _mask_stem(split: str, image_id: str) -> str:
  return f"{split}/{os.path.splitext(image_id)[0]}"


def _write_mask(root: str, rel: str, mask: np.ndarray):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(mask, np.uint8) * 255, "L").save(path)


def _render(instance, item: Item) -> np.ndarray:
  mask = np.asarray(instance.render(), bool)
  if mask.shape != (item.height, item.width):
    raise ConvertError(f"{item.where}: mask {instance.key} is {mask.shape[1]}x{mask.shape[0]}; "
                       f"the image is {item.width}x{item.height}")
  return mask


def _masks_lines(items: Sequence[Item], split: str, stage: str, left_out: List[LeftOut]):
  """Renders every instance and ignore mask to PNG under `stage`; localization lines."""
  lines, kept = [], []
  for item in items:
    stem = _mask_stem(split, item.image_id)
    rendered = [(inst.key, _render(inst, item)) for inst in item.masks]
    if not any(m.any() for _, m in rendered):
      left_out.append(LeftOut(item.image_id, item.where, "empty masks",
                              "its instance masks cover no pixel (nothing to score)"))
      continue
    ignore = np.zeros((item.height, item.width), bool)
    for inst in item.ignore:
      ignore |= _render(inst, item)
    ignore_rel = stem + IGNORE_SUFFIX if ignore.any() else ""
    if ignore_rel:
      _write_mask(stage, ignore_rel, ignore)
    for k, (key, mask) in enumerate(rendered):
      rel = f"{stem}_{key}.png"
      _write_mask(stage, rel, mask)
      lines.append(f"{item.image_id},{rel},{ignore_rel if k == 0 else ''}")
    kept.append(item)
  return lines, kept


def _install(stage_split: str, final: str):
  """Replaces `final` by the staged folder (two renames; the old one then removed)."""
  old = ""
  if os.path.lexists(final):
    old = f"{final}.old{os.getpid()}"
    os.rename(final, old)
  os.rename(stage_split, final)
  if old:
    shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)


def _no_localization(items: Sequence[Item], split: str, labels_only: bool, masks: bool) -> str:
  """Why no localization.txt is written ('' if it is)."""
  if labels_only:
    return "--labels_only"
  missing = sum(1 for it in items if not (it.masks if masks else it.boxes))
  if not missing:
    return ""
  what = "mask" if masks else "box"
  if split != TRAIN:  # the readers refuse this before; never write a split that cannot score
    raise ConvertError(f"{split}: {missing} images have no {what}; val and test need one")
  return f"{missing} of {len(items)} images have no {what}; the train split needs none"


def _localization_kind(split_dir: str) -> str:
  """'boxes' or 'masks' by the first line of a split's localization.txt ('' if none)."""
  try:
    with open(os.path.join(split_dir, "localization.txt"), encoding="utf-8") as f:
      line = next((line for line in f if line.strip()), "")
  except (OSError, UnicodeDecodeError):
    return ""
  return {5: "boxes", 3: "masks"}.get(len(line.split(",")), "")


def _check_same_kind(out: str, split: str, kind: str):
  """A dataset is a box dataset or a mask dataset: every split's localization the same kind."""
  for other in SPLITS:
    found = _localization_kind(os.path.join(out, other)) if other != split else ""
    if kind and found and found != kind:
      raise ConvertError(
          f"{os.path.join(out, other, 'localization.txt')} holds {found}; this {split} split "
          f"would hold {kind}: a dataset has boxes or masks, not both (with masks: --masks for "
          "val and test, --masks or --labels_only for train)")


def write_split(items: Sequence[Item], left_out: Sequence[LeftOut], out: str, split: str,
                data_root: str, masks_dir: str = "", labels_only: bool = False) -> Written:
  """Writes, checks and installs `<out>/<split>` (and `<masks_dir>/<split>`); the summary."""
  left_out = list(left_out)
  why_none = _no_localization(items, split, labels_only, bool(masks_dir))
  use_masks = bool(masks_dir) and not why_none
  _check_same_kind(out, split, "" if why_none else ("masks" if use_masks else "boxes"))
  os.makedirs(out, exist_ok=True)
  stage = os.path.join(out, f".convert-{split}-{os.getpid()}")
  mask_stage = os.path.join(masks_dir, f".convert-{split}-{os.getpid()}") if use_masks else ""
  try:
    for d in (stage, mask_stage):
      if d:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.join(d, split))
    loc: List[str] = []
    if use_masks:
      loc, items = _masks_lines(items, split, mask_stage, left_out)
    elif not why_none:
      loc = [f"{it.image_id},{','.join(number_text(v) for v in box)}"
             for it in items for box in it.boxes]
    if not items:
      raise ConvertError(f"no image left to write for split {split!r}"
                         + (f" ({len(left_out)} left out: {left_out[0].where}: "
                            f"{left_out[0].reason}, ...)" if left_out else ""))
    classes = ClassIndex(out)
    labels = classes.labels(items, split)
    files = {
        "image_ids.txt": [it.image_id for it in items],
        "class_labels.txt": [f"{it.image_id},{label}" for it, label in zip(items, labels)],
        "image_sizes.txt": [f"{it.image_id},{it.width},{it.height}" for it in items],
    }
    if not why_none:
      files["localization.txt"] = loc
    for name, lines in files.items():
      with open(os.path.join(stage, split, name), "w", encoding="utf-8", newline="") as f:
        f.write("".join(line + "\n" for line in lines))
    try:  # what the trainer will read, read as it reads it
      metadata.read_split("masks" if use_masks else "boxes", stage, split, data_root,
                          mask_root=mask_stage, check_files=True, num_classes=len(classes.names))
    except metadata.MetadataError as e:  # named as the files would have been
      message = str(e).replace(stage, out).replace(mask_stage or stage, masks_dir or out)
      raise ConvertError("the written split does not read back: "
                         + "; ".join(message.splitlines())) from e
    classes.write()
    if use_masks:
      _install(os.path.join(mask_stage, split), os.path.join(masks_dir, split))
    split_dir = os.path.join(out, split)
    _install(os.path.join(stage, split), split_dir)
  finally:
    for d in (stage, mask_stage):
      if d:
        shutil.rmtree(d, ignore_errors=True)
  listing = os.path.join(out, f"{split}_left_out.json")
  atomic_write(listing, json.dumps(
      {"split": split, "num_images": len(left_out),
       "images": [dataclasses.asdict(x) for x in left_out]}, indent=1) + "\n")
  return Written(split, len(items), sum(len(it.boxes) for it in items),
                 sum(len(it.masks) for it in items) if use_masks else 0,
                 sum(1 for line in loc if not line.endswith(",")) if use_masks else 0,
                 "" if why_none else ("masks" if use_masks else "boxes"), why_none,
                 len({it.label for it in items}), len(classes.names), len(classes.added),
                 collections.Counter(x.kind for x in left_out), listing, split_dir)
