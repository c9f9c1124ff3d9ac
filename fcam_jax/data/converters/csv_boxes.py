"""An image folder and a CSV of boxes (one row per box) -> one split of boxes.

The CSV has a header naming its columns (any order; other columns are ignored):
`image,label,x0,y0,x1,y1` (`--box_format=xyxy`) or `image,label,x,y,w,h` (`xywh`),
one row per box. `image` is the file's path under --images, `label` a class name. An
image with several boxes has several rows (with the same label); a row whose box
fields are all empty gives an image its label and no box, which only the train split
may have. Boxes are pixel edges as written (docs/design.md §8: `x1 = x0 + width`;
fractions kept), checked to be non-empty and inside the image, whose size is read from
its file's header.
"""

import csv
from typing import Dict, List

from fcam_jax.data.converters.classes import TRAIN
from fcam_jax.data.converters.common import (ConvertError, Item, box_problem, class_name,
                                             image_size, relative_id)

BOX_COLUMNS = {"xyxy": ("x0", "y0", "x1", "y1"), "xywh": ("x", "y", "w", "h")}


def _columns(path: str, header: List[str], box_format: str) -> Dict[str, int]:
  names = [h.strip() for h in header]
  wanted = ("image", "label") + BOX_COLUMNS[box_format]
  for k, name in enumerate(names):
    if name in names[:k]:
      raise ConvertError(f"{path}:1: column {name!r} appears twice in the header")
  missing = [c for c in wanted if c not in names]
  if missing:
    raise ConvertError(f"{path}:1: the header {','.join(names)!r} lacks {','.join(missing)}; "
                       f"expected {','.join(wanted)} (--box_format={box_format}; other "
                       "columns are ignored)")
  return {c: names.index(c) for c in wanted}


def _box(path: str, n: int, fields: List[str], box_format: str):
  """The row's box as pixel edges, or None for a row without one."""
  if not any(fields):
    return None
  names = BOX_COLUMNS[box_format]
  if not all(fields):
    empty = [c for c, v in zip(names, fields) if not v]
    raise ConvertError(f"{path}:{n}: box field(s) {','.join(empty)} empty; leave all four "
                       "empty for an image without a box (train only), or none")
  try:
    a, b, c, d = (float(v) for v in fields)
  except ValueError:
    bad = next(v for v in fields if not _is_number(v))
    raise ConvertError(f"{path}:{n}: box field {bad!r} is not a number") from None
  return (a, b, a + c, b + d) if box_format == "xywh" else (a, b, c, d)


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def read(path: str, images_dir: str, data_root: str, split: str,
         box_format: str = "xyxy") -> List[Item]:
  """The CSV's images in order of first row, with their labels and boxes."""
  items: Dict[str, Item] = {}
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      reader = csv.reader(f)
      try:
        header = next(reader)
      except StopIteration:
        raise ConvertError(f"{path}: empty file; expected a header line "
                           f"image,label,{','.join(BOX_COLUMNS[box_format])}") from None
      cols = _columns(path, header, box_format)
      for row in reader:
        n = reader.line_num
        if not any(cell.strip() for cell in row):
          continue
        if len(row) != len(header):
          raise ConvertError(f"{path}:{n}: {len(row)} fields; the header has {len(header)} "
                             f"({','.join(h.strip() for h in header)})")
        where = f"{path}:{n}"
        image = row[cols["image"]].strip()
        label = class_name(row[cols["label"]], where)
        box = _box(path, n, [row[cols[c]].strip() for c in BOX_COLUMNS[box_format]], box_format)
        if box is None and split != TRAIN:
          raise ConvertError(f"{where}: no box for {image!r}; only the train split may have "
                             "images without one (val and test are scored against boxes)")
        rel, file_path = relative_id(images_dir, data_root, image, where)
        item = items.get(rel)
        if item is None:
          width, height = image_size(file_path, where)
          item = items[rel] = Item(rel, label, width, height, where)
        elif item.label != label:
          raise ConvertError(f"{where}: image {image!r} is labelled {label!r} here and "
                             f"{item.label!r} on {item.where} (one class per image)")
        if box is not None:
          problem = box_problem(box, item.width, item.height)
          if problem:
            raise ConvertError(f"{where}: {problem} of {image!r}")
          item.boxes.append(box)
  except csv.Error as e:
    raise ConvertError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
  except UnicodeDecodeError as e:
    raise ConvertError(f"{path}: not UTF-8 text ({e})") from e
  except FileNotFoundError:
    raise ConvertError(f"{path}: file not found") from None
  if not items:
    raise ConvertError(f"{path}: no row after the header")
  return list(items.values())
