"""Reader of the wsolevaluation metadata layout (docs/design.md §8) into ImageRecords, with checks.

`<metadata_root>/<split>/` holds header-less comma-separated files:

  image_ids.txt      path                     (the split's images, in order)
  class_labels.txt   path,label               (0-based)
  image_sizes.txt    path,width,height        (optional for OpenImages, which has none)
  localization.txt   path,x0,y0,x1,y1         (CUB / ILSVRC: one line per box)
                     path,mask_path,ignore    (OpenImages: one line per instance mask;
                                               the ignore mask only on the first line)

`localization.txt` may be absent (training splits). Image paths are relative to
`data_root`, mask paths to `mask_root` (for the benchmark's release: `<dataset
dir>/OpenImages`).

Two kinds of problems, each named by file and line:
- format errors (a missing or unreadable metadata file, a malformed line, a value that
  is not a (finite) number, an id not in image_ids.txt, an ignore path off an image's
  first line, an empty split) always raise MetadataError: the files are not what they
  should be, and nothing can be trusted;
- problems of one image (an id or mask path escaping its root, a repeated id, a
  missing, second or out-of-range label or size, a box outside the image or with
  x1 < x0, no localization entry, an image or mask file missing, unreadable or of the
  wrong size) are all collected. `on_error='fail'` raises one MetadataError listing
  them; 'skip' drops the images at fault (a repeated id: only its repeat) and returns
  the problems with the records.

Boxes are not clipped to the image: wsolevaluation scores ground-truth boxes as given
(it refuses negative coordinates and does not clip past the right or bottom edge), so
clipping would change MaxBoxAcc where the benchmark would not; a box outside its image
is a broken annotation, refused (or its image dropped).
"""

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np

from fcam_jax.data import images
from fcam_jax.data.records import ON_ERROR, ImageRecord, Problem, describe

DATASETS = ("CUB", "OpenImages", "ILSVRC")
# The localization format each name reads: boxes, or OpenImages-style instance masks.
FORMATS = {"CUB": "boxes", "ILSVRC": "boxes", "OpenImages": "masks", "boxes": "boxes",
           "masks": "masks"}
FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")


class MetadataError(ValueError):
  """Bad metadata; the message names the file (and line)."""


class _Found:
  """The per-image problems found so far, and the positions of the images to drop."""

  def __init__(self):
    self.problems: List[Problem] = []
    self.bad: Set[int] = set()

  def add(self, image_id: str, where: str, reason: str, position: Optional[int] = None):
    self.problems.append(Problem(image_id, where, reason))
    if position is not None:
      self.bad.add(position)


def _lines(path: str):
  """(line number, text) of the non-blank lines of a text file."""
  try:
    with open(path, encoding="utf-8", newline="") as f:
      raw = [line.rstrip("\r") for line in f.read().split("\n")]
  except FileNotFoundError:
    raise MetadataError(f"{path}: file not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise MetadataError(f"{path}: unreadable ({e})") from e
  return [(n, line) for n, line in enumerate(raw, 1) if line.strip()]


def _fields(path: str, n: int, line: str, count: int, form: str) -> List[str]:
  fields = line.split(",")
  if len(fields) != count:
    raise MetadataError(f"{path}:{n}: malformed line {line!r}; expected {form}")
  return fields


def _number(path: str, n: int, text: str, kind=int, what="value"):
  try:
    value = kind(text)
  except ValueError:
    kind_name = "an integer" if kind is int else "a number"
    raise MetadataError(f"{path}:{n}: {what} {text!r} is not {kind_name}") from None
  if kind is float and not np.isfinite(value):
    raise MetadataError(f"{path}:{n}: {what} {text!r} is not finite")
  return value


def _escapes(rel: str) -> bool:
  """Whether `rel` is not a relative path inside its root (absolute, '..', empty)."""
  norm = os.path.normpath(rel)
  return not rel or os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep)


def _outside(what: str, rel: str) -> str:
  return f"{what} {rel!r} must be a relative path inside its root"


def _known_id(path: str, n: int, image_id: str, positions: Dict[str, int]) -> int:
  if image_id not in positions:
    raise MetadataError(f"{path}:{n}: image {image_id!r} is not listed in image_ids.txt")
  return positions[image_id]


def split_dir(metadata_root: str, dataset: str, split: str) -> str:
  """`metadata_root/split`, or `metadata_root/dataset/split` (the repo's own layout)."""
  for d in (os.path.join(metadata_root, split), os.path.join(metadata_root, dataset, split)):
    if os.path.isfile(os.path.join(d, "image_ids.txt")):
      return d
  raise MetadataError(f"{os.path.join(metadata_root, split, 'image_ids.txt')}: file not found "
                      f"(nor under {os.path.join(metadata_root, dataset, split)})")


def _read_ids(path: str, found: _Found):
  """[(image id, line)] and {image id: position}; a repeated id keeps its first line."""
  ids, positions = [], {}
  for n, line in _lines(path):
    if "," in line:
      raise MetadataError(f"{path}:{n}: image id {line!r} contains ','")
    if line in positions:
      found.add(line, f"{path}:{n}", f"duplicate image id {line!r} "
                f"(first on line {ids[positions[line]][1]})")
      continue
    positions[line] = len(ids)
    ids.append((line, n))
    if _escapes(line):
      found.add(line, f"{path}:{n}", _outside("image id", line), positions[line])
  if not ids:
    raise MetadataError(f"{path}: no image")
  return ids, positions


def _read_labels(path: str, ids_path: str, ids, positions, num_classes, found) -> List[int]:
  labels: List[Optional[int]] = [None] * len(ids)
  for n, line in _lines(path):
    image_id, text = _fields(path, n, line, 2, "path,label")
    i = _known_id(path, n, image_id, positions)
    if labels[i] is not None:
      found.add(image_id, f"{path}:{n}", f"second label for {image_id!r}", i)
      continue
    labels[i] = label = _number(path, n, text, int, "label")
    if label < 0 or (num_classes is not None and label >= num_classes):
      bound = num_classes if num_classes is not None else "inf"
      found.add(image_id, f"{path}:{n}",
                f"label {label} of {image_id!r} is outside [0, {bound})", i)
  for k, ((image_id, n), label) in enumerate(zip(ids, labels)):
    if label is None and k not in found.bad:
      found.add(image_id, f"{ids_path}:{n}", f"image {image_id!r} has no label in {path}", k)
  return labels


def _read_sizes(path: str, ids_path: str, ids, positions, found) -> List[Tuple[int, int]]:
  sizes: List[Optional[Tuple[int, int]]] = [None] * len(ids)
  for n, line in _lines(path):
    image_id, w, h = _fields(path, n, line, 3, "path,width,height")
    i = _known_id(path, n, image_id, positions)
    w, h = _number(path, n, w, int, "width"), _number(path, n, h, int, "height")
    if sizes[i] is not None:
      found.add(image_id, f"{path}:{n}", f"second size for {image_id!r}", i)
    elif w <= 0 or h <= 0:
      found.add(image_id, f"{path}:{n}", f"image size {w}x{h} of {image_id!r} is not positive", i)
      sizes[i] = (0, 0)
    else:
      sizes[i] = (w, h)
  for k, ((image_id, n), size) in enumerate(zip(ids, sizes)):
    if size is None and k not in found.bad:
      found.add(image_id, f"{ids_path}:{n}", f"image {image_id!r} has no size in {path}", k)
  return sizes


def _read_boxes(path: str, ids, positions, sizes, found) -> List[list]:
  """Per image, its boxes (x0, y0, x1, y1), checked against the image size if known."""
  boxes: List[list] = [[] for _ in ids]
  for n, line in _lines(path):
    image_id, *coords = _fields(path, n, line, 5, "path,x0,y0,x1,y1")
    i = _known_id(path, n, image_id, positions)
    x0, y0, x1, y1 = (_number(path, n, c, float, "box coordinate") for c in coords)
    box = f"box {x0:g},{y0:g},{x1:g},{y1:g} of {image_id!r}"
    w, h = sizes[i] or (np.inf, np.inf)
    if i in found.bad:
      pass  # dropped already (e.g. its size is bad): no more noise about it
    elif x1 < x0 or y1 < y0:
      found.add(image_id, f"{path}:{n}", f"{box} has x1 < x0 or y1 < y0", i)
    elif x0 < 0 or y0 < 0 or x1 > w or y1 > h:
      found.add(image_id, f"{path}:{n}", f"{box} is outside the {w}x{h} image", i)
    boxes[i].append((x0, y0, x1, y1))
  return boxes


def _read_masks(path: str, ids, positions, mask_root: str, found):
  """Per image, [(mask path, line)] and its ignore path and line ('' = none)."""
  masks: List[list] = [[] for _ in ids]
  ignores = [("", 0)] * len(ids)
  for n, line in _lines(path):
    image_id, mask, ignore = _fields(path, n, line, 3, "path,mask_path,ignore_path")
    i = _known_id(path, n, image_id, positions)
    if masks[i] and ignore:
      raise MetadataError(f"{path}:{n}: ignore path {ignore!r} of {image_id!r} is not on "
                          "the image's first line (only the first line may name it)")
    for what, rel in (("mask path", mask), ("ignore path", ignore)):
      if rel and _escapes(rel):
        found.add(image_id, f"{path}:{n}", _outside(what, rel), i)
    if i in found.bad:
      masks[i].append(("", n))  # never opened
      continue
    if ignore:
      ignores[i] = (os.path.abspath(os.path.join(mask_root, ignore)), n)
    masks[i].append((os.path.abspath(os.path.join(mask_root, mask)), n))
  return masks, ignores


def _check_mask_files(path: str, ids, masks, ignores, sizes, found):
  """Every mask file readable and of its image's size."""
  for k, (image_id, _) in enumerate(ids):
    named = list(masks[k]) + ([ignores[k]] if ignores[k][0] else [])
    for mask_path, n in named:
      if k in found.bad:
        break
      try:
        size = images.image_size(mask_path)
      except images.ImageError as e:
        found.add(image_id, f"{path}:{n}", str(e), k)
        continue
      if size != sizes[k]:
        found.add(image_id, f"{path}:{n}", f"mask {mask_path} is {size[0]}x{size[1]}; "
                  f"the image {image_id!r} is {sizes[k][0]}x{sizes[k][1]}", k)


def read_split_with_problems(dataset: str, metadata_root: str, split: str, data_root: str = "",
                             mask_root: str = "", check_files: bool = True,
                             num_classes: Optional[int] = None, on_error: str = "fail",
                             name: str = "") -> Tuple[List[ImageRecord], List[Problem]]:
  """The records of `<metadata_root>/<split>` and the problems of its images.

  `dataset` names the format (`FORMATS`): 'CUB', 'ILSVRC' or 'boxes' for box
  localization, 'OpenImages' or 'masks' for instance masks; `name` (default `dataset`)
  is the dataset's name, for the `<metadata_root>/<name>/<split>` layout.

  Records are in image_ids.txt order; `index` is the position among those kept.
  on_error: 'fail' raises one MetadataError listing every per-image problem (the
  first ten, and how many); 'skip' drops the images at fault and returns the problems.
  check_files: also require the image (and mask) files and mask sizes to match the
  image; image sizes missing from the metadata (OpenImages) are then read from the
  image headers where they are needed (box or mask ground truth). Otherwise no file but
  the metadata is opened and missing sizes are 0.
  """
  if dataset not in FORMATS:
    raise MetadataError(f"unknown dataset {dataset!r}; one of {', '.join(FORMATS)}")
  masks = FORMATS[dataset] == "masks"
  if on_error not in ON_ERROR:
    raise MetadataError(f"on_error={on_error!r}: must be one of {', '.join(ON_ERROR)}")
  if check_files and not data_root:
    raise MetadataError("check_files needs data_root (the image folder)")
  root = split_dir(metadata_root, name or dataset, split)
  ids_path, labels_path, sizes_path, loc_path = (os.path.join(root, f) for f in FILES)
  has_localization = os.path.isfile(loc_path)

  found = _Found()
  ids, positions = _read_ids(ids_path, found)
  try:
    records = _read_records(masks, ids, positions, found, ids_path, labels_path, sizes_path,
                            loc_path, has_localization, data_root, mask_root, check_files,
                            num_classes)
  except MetadataError as e:
    if not found.problems:
      raise
    raise MetadataError(describe([str(e), *map(str, found.problems)])) from e
  if found.problems and on_error == "fail":
    raise MetadataError(describe(found.problems))
  kept = [r for k, r in enumerate(records) if k not in found.bad]
  return [dataclasses.replace(r, index=k) for k, r in enumerate(kept)], found.problems


def _read_records(masks_format, ids, positions, found, ids_path, labels_path, sizes_path, loc_path,
                  has_localization, data_root, mask_root, check_files, num_classes):
  """Every image's record (bad ones included), adding per-image problems to `found`."""
  labels = _read_labels(labels_path, ids_path, ids, positions, num_classes, found)
  paths = [os.path.abspath(os.path.join(data_root, i)) if data_root and k not in found.bad
           else "" for k, (i, _) in enumerate(ids)]
  if check_files:
    for k, ((image_id, n), path) in enumerate(zip(ids, paths)):
      if k not in found.bad and not os.path.isfile(path):
        found.add(image_id, f"{ids_path}:{n}", f"image file {path} not found", k)

  sizes: List[Optional[Tuple[int, int]]] = [None] * len(ids)
  if os.path.isfile(sizes_path):
    sizes = _read_sizes(sizes_path, ids_path, ids, positions, found)
  elif check_files and (not masks_format or has_localization):
    for k, path in enumerate(paths):  # OpenImages ships no sizes: read the headers
      if k in found.bad:
        continue
      try:
        sizes[k] = images.image_size(path)
      except images.ImageError as e:
        found.add(ids[k][0], f"{ids_path}:{ids[k][1]}", str(e), k)
  elif not masks_format:
    raise MetadataError(f"{sizes_path}: file not found (box datasets need image sizes)")

  boxes: List[list] = [[] for _ in ids]
  masks: List[list] = [[] for _ in ids]
  ignores = [("", 0)] * len(ids)
  if has_localization and masks_format:
    masks, ignores = _read_masks(loc_path, ids, positions, mask_root, found)
    if check_files:
      _check_mask_files(loc_path, ids, masks, ignores, sizes, found)
  elif has_localization:
    boxes = _read_boxes(loc_path, ids, positions, sizes, found)
  if has_localization:
    for k, ((image_id, n), b, m) in enumerate(zip(ids, boxes, masks)):
      if not (b or m) and k not in found.bad:
        found.add(image_id, f"{ids_path}:{n}", f"image {image_id!r} has no entry in {loc_path}", k)

  return [ImageRecord(index=k, image_id=image_id, path=paths[k], label=labels[k] or 0,
                      width=(sizes[k] or (0, 0))[0], height=(sizes[k] or (0, 0))[1],
                      boxes=np.asarray(boxes[k], np.float32).reshape(-1, 4),
                      mask_paths=tuple(p for p, _ in masks[k]), ignore_path=ignores[k][0],
                      where=f"{ids_path}:{n}")
          for k, (image_id, n) in enumerate(ids)]


def read_split(dataset: str, metadata_root: str, split: str, data_root: str = "",
               mask_root: str = "", check_files: bool = True,
               num_classes: Optional[int] = None, name: str = "") -> List[ImageRecord]:
  """The records of `<metadata_root>/<split>`, in image_ids.txt order (index = position).

  Any problem raises MetadataError naming its file and line (all of an image's
  problems in one error; see read_split_with_problems to skip bad images instead).
  check_files: as in read_split_with_problems.
  """
  return read_split_with_problems(dataset, metadata_root, split, data_root, mask_root,
                                  check_files, num_classes, on_error="fail", name=name)[0]


def _read_mask(path: str, size: int) -> np.ndarray:
  """A mask file as grayscale, resized straight to size x size (nearest), non-zero = True."""
  mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE) if os.path.isfile(path) else None
  if mask is None:
    raise images.ImageError(f"{path}: missing or unreadable mask")
  return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0


def load_masks(record: ImageRecord, map_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """(foreground, ignore) bool (S, S): union of the instance masks; ignore minus foreground."""
  if not record.mask_paths:
    raise images.ImageError(f"{record.image_id}: no instance mask to evaluate against")
  fg = np.zeros((map_size, map_size), bool)
  for path in record.mask_paths:
    fg |= _read_mask(path, map_size)
  ignore = _read_mask(record.ignore_path, map_size) if record.ignore_path else np.zeros_like(fg)
  return fg, ignore & ~fg


def openimages_mask_loader(records: Sequence[ImageRecord], map_size: int = 224,
                           cache: bool = True) -> Callable[[int], Tuple[np.ndarray, np.ndarray]]:
  """index -> (foreground, ignore) at map size, for MaskEvaluator.

  With `cache`, masks are kept bit-packed after the first read (val is evaluated every
  epoch: 2500 images take ~30 MB).
  """
  by_index = {r.index: r for r in records}
  packed: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

  def load(index: int) -> Tuple[np.ndarray, np.ndarray]:
    if index in packed:
      fg, ignore = packed[index]
      n = map_size * map_size
      return (np.unpackbits(fg, count=n).astype(bool).reshape(map_size, map_size),
              np.unpackbits(ignore, count=n).astype(bool).reshape(map_size, map_size))
    if index not in by_index:
      raise KeyError(f"no record with index {index}")
    fg, ignore = load_masks(by_index[index], map_size)
    if cache:
      packed[index] = (np.packbits(fg), np.packbits(ignore))
    return fg, ignore

  return load
