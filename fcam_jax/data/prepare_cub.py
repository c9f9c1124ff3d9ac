r"""Official CUB_200_2011 release -> the wsolevaluation metadata layout (docs/design.md §8).

  python -m fcam_jax.data.prepare_cub --cub_root=CUB_200_2011 --out=metadata/CUB \
      [--val_metadata=wsolevaluation/metadata/CUB/val] [--val_per_class=5] [--seed=0]

Reads images.txt, image_class_labels.txt (1-based), train_test_split.txt (1 = train),
bounding_boxes.txt (x, y, w, h floats) and the images' sizes from `images/`, and writes
`<out>/{train,val,test}/{image_ids,class_labels,image_sizes,localization}.txt` with
0-based labels and boxes `x0, y0, x1, y1 = int(x), int(y), int(x + w), int(y + h)`
(the release's values are whole numbers, so this equals the benchmark's metadata, e.g.
`60.0 27.0 325.0 304.0` -> `60,27,385,331`). Image ids are relative to `images/`,
which is then the data root.

Validation split. The benchmark's CUB val ("train-fullsup") is CUBV2: 1000 new Flickr
images (~5 per class) collected by the wsolevaluation authors, disjoint from both the
official train and test sets and not part of this release. So:
  * --val_metadata=DIR: DIR (or DIR/val) holds that val metadata (wsolevaluation's
    metadata/CUB/val); it is checked and copied as is, and train is the whole official
    train set (5994 images) - exactly the benchmark's splits. The CUBV2 images must be
    put under the same data root (its tar extracts into the CUB image folder).
  * otherwise val is `val_per_class` images per class drawn (seeded) from the official
    *train* set and removed from train, so that model selection never sees test images
    (with 5: 1000 val, 4994 train). --val_per_class=0 writes no val split.
Test is always the official test set (5794 images).

Bad input ends in one `error:` line: exit 2 for flags (a --cub_root that is not a
folder), 1 for a malformed release (naming file:line) or unreadable image.
"""

import os
import shutil
from typing import Dict, List, Tuple

from absl import flags
import numpy as np

from fcam_jax import cli
from fcam_jax.data import images
from fcam_jax.data import metadata

_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")


class CubError(ValueError):
  """A malformed CUB release; the message names the file and line."""


def _table(path: str, width: int, kinds) -> Dict[int, tuple]:
  """`<image id> <fields...>` lines -> {image id: fields}, checked."""
  if not os.path.isfile(path):
    raise CubError(f"{path}: file not found")
  rows = {}
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != width + 1:
        raise CubError(f"{path}:{n}: malformed line {line.rstrip()!r}; expected an image id "
                       f"and {width} field(s)")
      try:
        key = int(parts[0])
        values = tuple(kind(p) for kind, p in zip(kinds, parts[1:]))
      except ValueError:
        raise CubError(f"{path}:{n}: malformed line {line.rstrip()!r}") from None
      if key in rows:
        raise CubError(f"{path}:{n}: duplicate image id {key}")
      rows[key] = values + (n,)
  return rows


def read_release(cub_root: str) -> List[dict]:
  """One dict per image (id order): id, path, label (0-based), train, box, width, height."""
  paths = [os.path.join(cub_root, f) for f in _CUB_FILES]
  names = _table(paths[0], 1, (str,))
  labels = _table(paths[1], 1, (int,))
  split = _table(paths[2], 1, (int,))
  boxes = _table(paths[3], 4, (float, float, float, float))
  for path, rows in zip(paths[1:], (labels, split, boxes)):
    for key, row in rows.items():
      if key not in names:
        raise CubError(f"{path}:{row[-1]}: image id {key} is not in {paths[0]}")
  out = []
  for key in sorted(names):
    rel, line = names[key]
    for path, rows in zip(paths[1:], (labels, split, boxes)):
      if key not in rows:
        raise CubError(f"{paths[0]}:{line}: image id {key} ({rel}) is missing from {path}")
    label, n = labels[key]
    if label < 1:
      raise CubError(f"{paths[1]}:{n}: class {label} of image {key}: classes are 1-based")
    is_train, n = split[key]
    if is_train not in (0, 1):
      raise CubError(f"{paths[2]}:{n}: is_training_image must be 0 or 1, got {is_train}")
    x, y, w, h, n = boxes[key]
    if not all(np.isfinite(v) for v in (x, y, w, h)) or min(x, y, w, h) < 0:
      raise CubError(f"{paths[3]}:{n}: bad box {x:g} {y:g} {w:g} {h:g} of image {key}")
    image_path = os.path.join(cub_root, "images", rel)
    try:
      width, height = images.image_size(image_path)
    except images.ImageError as e:
      raise CubError(f"{paths[0]}:{line}: {e}") from e
    box = (int(x), int(y), int(x + w), int(y + h))
    if box[2] > width or box[3] > height:
      raise CubError(f"{paths[3]}:{n}: box {x:g} {y:g} {w:g} {h:g} of image {key} ends outside "
                     f"the {width}x{height} image")
    out.append(dict(id=key, path=rel, label=label - 1, train=bool(is_train), box=box,
                    width=width, height=height))
  return out


def write_split(directory: str, items: List[dict]):
  os.makedirs(directory, exist_ok=True)
  rows = {
      "image_ids.txt": [it["path"] for it in items],
      "class_labels.txt": [f"{it['path']},{it['label']}" for it in items],
      "image_sizes.txt": [f"{it['path']},{it['width']},{it['height']}" for it in items],
      "localization.txt": [f"{it['path']},{','.join(map(str, it['box']))}" for it in items],
  }
  for name, lines in rows.items():
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      f.write("".join(line + "\n" for line in lines))


def sample_val(train: List[dict], per_class: int, seed: int) -> Tuple[List[dict], List[dict]]:
  """(train minus val, val): `per_class` random train images of every class."""
  rng = np.random.default_rng(seed)
  by_class: Dict[int, List[int]] = {}
  for k, it in enumerate(train):
    by_class.setdefault(it["label"], []).append(k)
  chosen = set()
  for label in sorted(by_class):
    members = by_class[label]
    if len(members) <= per_class:
      raise CubError(f"class {label + 1} has {len(members)} train images: cannot hold out "
                     f"{per_class} for val and keep any for training")
    chosen.update(rng.choice(members, per_class, replace=False).tolist())
  return ([it for k, it in enumerate(train) if k not in chosen],
          [it for k, it in enumerate(train) if k in chosen])


def convert(cub_root: str, out: str, val_metadata: str = "", val_per_class: int = 5,
            seed: int = 0) -> Dict[str, int]:
  """Writes the metadata; returns the number of images per split."""
  items = read_release(cub_root)
  train = [it for it in items if it["train"]]
  test = [it for it in items if not it["train"]]
  counts = {}
  if val_metadata:
    source = os.path.normpath(val_metadata)
    if not os.path.isfile(os.path.join(source, "image_ids.txt")):
      source = os.path.join(source, "val")
    val = metadata.read_split("CUB", os.path.dirname(source) or ".", os.path.basename(source),
                              check_files=False)
    os.makedirs(os.path.join(out, "val"), exist_ok=True)
    for name in metadata.FILES:
      shutil.copyfile(os.path.join(source, name), os.path.join(out, "val", name))
    counts["val"] = len(val)
  elif val_per_class > 0:
    train, val = sample_val(train, val_per_class, seed)
    write_split(os.path.join(out, "val"), val)
    counts["val"] = len(val)
  write_split(os.path.join(out, "train"), train)
  write_split(os.path.join(out, "test"), test)
  counts.update(train=len(train), test=len(test))
  return counts


_CUB_ROOT = flags.DEFINE_string("cub_root", None, "The extracted CUB_200_2011 folder.")
_OUT = flags.DEFINE_string("out", None, "Output metadata folder (gets train/, val/, test/).")
_VAL_METADATA = flags.DEFINE_string(
    "val_metadata", "", "The benchmark's CUB val metadata (CUBV2), copied as val.")
_VAL_PER_CLASS = flags.DEFINE_integer(
    "val_per_class", 5, "Without --val_metadata: train images per class held out as val.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the val draw.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not os.path.isdir(_CUB_ROOT.value):
    cli.fail(f"--cub_root={_CUB_ROOT.value}: no such folder")
  if _VAL_METADATA.value and not os.path.exists(_VAL_METADATA.value):
    cli.fail(f"--val_metadata={_VAL_METADATA.value}: no such file or folder")
  if _VAL_PER_CLASS.value < 0:
    cli.fail(f"--val_per_class={_VAL_PER_CLASS.value}: must be >= 0")
  counts = convert(_CUB_ROOT.value, _OUT.value, _VAL_METADATA.value, _VAL_PER_CLASS.value,
                   _SEED.value)
  print(", ".join(f"{k}: {v} images" for k, v in sorted(counts.items())) + f" -> {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["cub_root", "out"])
  # A malformed release (file:line), unreadable images, a bad --val_metadata, an unwritable --out.
  cli.run(main, data_errors=(CubError, metadata.MetadataError, images.ImageError, OSError))
