"""A COCO instances JSON (images, annotations, categories) -> one split, boxes or masks.

Label rule (one class per image): the category of largest total annotated area (the
annotation's `area`, or its bbox's w * h where there is none; crowds included); an
image where another category covers at least --ambiguous_ratio of that area is left
out as ambiguous, and so is an image without annotations. Kept: the annotations of the
chosen category.

Boxes: COCO's bbox `x, y, w, h` (float pixels, pixel edges) becomes
`floor(x), floor(y), ceil(x + w), ceil(y + h)` after rounding to 1e-3 pixel (the
smallest whole-pixel box holding it); crowd regions (iscrowd=1) of the chosen category
are boxes too (a box of the crowd is where the class is; scoring takes the best-matching
box). With --masks: one PNG per non-crowd instance, rendered from its polygons or RLE
(fcam_jax.data.converters.rle), and the crowd regions of the chosen category united into
the image's ignore mask; an image whose chosen category has only crowds is left out.
"""

import json
import math
import numbers
import re
from typing import Dict, List, Tuple

from fcam_jax.data.converters import rle
from fcam_jax.data.converters.common import (ConvertError, Instance, Item, LeftOut,
                                             box_problem, choose_label, class_name, image_size,
                                             outward, relative_id)


def _load(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ConvertError(f"{path}: file not found") from None
  except json.JSONDecodeError as e:
    raise ConvertError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from e
  except (OSError, UnicodeDecodeError) as e:
    raise ConvertError(f"{path}: unreadable ({e})") from e
  if not isinstance(data, dict):
    raise ConvertError(f"{path}: the top level is a {type(data).__name__}; expected an object "
                       "with images, annotations and categories")
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise ConvertError(f"{path}: no {key!r} list at the top level (a COCO instances file has "
                         "images, annotations and categories)")
  return data


def _is_num(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an annotation id fit for a mask file name
_KINDS = {
    "id": ("an integer or string id", lambda v: isinstance(v, (int, str))),
    "text": ("a string", lambda v: isinstance(v, str)),
    "size": ("a positive integer", lambda v: isinstance(v, int) and v > 0),
}


def _field(entry, key: str, where: str, kind: str):
  """entry[key], checked to be of `kind` (see _KINDS)."""
  if not isinstance(entry, dict) or key not in entry:
    raise ConvertError(f"{where}: no {key!r}")
  v = entry[key]
  what, ok = _KINDS[kind]
  if isinstance(v, bool) or not ok(v):
    raise ConvertError(f"{where}: {key} {v!r} is not {what}")
  return v


def _categories(path: str, cats: list) -> Dict[object, str]:
  names, seen = {}, {}
  for k, c in enumerate(cats):
    where = f"{path}: categories[{k}]"
    cid = _field(c, "id", where, "id")
    where = f"{path}: category id {cid}"
    name = class_name(_field(c, "name", where, "text"), where)
    if cid in names:
      raise ConvertError(f"{where}: repeated category id")
    if name in seen:
      raise ConvertError(f"{where}: name {name!r} is also category id {seen[name]}'s")
    names[cid], seen[name] = name, cid
  return names


def _bbox(a: dict, where: str) -> Tuple[float, float, float, float]:
  b = a.get("bbox")
  if not (isinstance(b, list) and len(b) == 4 and all(_is_num(v) for v in b)):
    raise ConvertError(f"{where}: bbox {b!r} is not [x, y, w, h] (four finite numbers)")
  if b[2] <= 0 or b[3] <= 0:
    raise ConvertError(f"{where}: bbox {b!r} has no area (w and h must be > 0)")
  return tuple(b)


def _area(a: dict, bbox) -> float:
  area = a.get("area")
  return float(area) if _is_num(area) and area > 0 else bbox[2] * bbox[3]


def _segmentation(a: dict, where: str, height: int, width: int):
  """A checked segmentation -> a render function (bool (height, width))."""
  seg = a.get("segmentation")
  if isinstance(seg, list) and seg:
    for poly in seg:
      if not (isinstance(poly, list) and len(poly) % 2 == 0 and all(_is_num(v) for v in poly)):
        raise ConvertError(f"{where}: polygon {str(poly)[:60]} is not a list of x, y numbers")
    return lambda: rle.polygons(seg, height, width)
  if isinstance(seg, dict):
    size, counts = seg.get("size"), seg.get("counts")
    if size != [height, width]:
      raise ConvertError(f"{where}: RLE size {size!r} is not the image's [height, width] = "
                         f"[{height}, {width}]")
    if not (isinstance(counts, str) or (isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts))):
      raise ConvertError(f"{where}: RLE counts are neither a string nor a list of integers")

    def render():
      try:
        return rle.decode(seg, height, width)
      except ValueError as e:
        raise ConvertError(f"{where}: bad RLE ({e})") from e
    return render
  raise ConvertError(f"{where}: no segmentation (polygons or RLE); --masks needs one per "
                     "instance (without --masks, boxes are written)")


def read(path: str, images_dir: str, data_root: str, masks: bool,
         ratio: float) -> Tuple[List[Item], List[LeftOut]]:
  """The JSON's images in its order: the kept ones as Items, and the ones left out."""
  data = _load(path)
  cats = _categories(path, data["categories"])
  entries, files = {}, {}
  for k, img in enumerate(data["images"]):
    iid = _field(img, "id", f"{path}: images[{k}]", "id")
    where = f"{path}: image id {iid}"
    if iid in entries:
      raise ConvertError(f"{where}: repeated image id")
    name = _field(img, "file_name", where, "text")
    if name in files:
      raise ConvertError(f"{where}: file_name {name!r} is also image id {files[name]}'s")
    entries[iid], files[name] = img, iid
    _field(img, "width", where, "size"), _field(img, "height", where, "size")
  by_image: Dict[object, List[dict]] = {}
  seen = set()
  for k, a in enumerate(data["annotations"]):
    aid = _field(a, "id", f"{path}: annotations[{k}]", "id")
    where = f"{path}: annotation id {aid}"
    if aid in seen:
      raise ConvertError(f"{where}: repeated annotation id")
    seen.add(aid)
    iid = _field(a, "image_id", where, "id")
    if iid not in entries:
      raise ConvertError(f"{where}: image_id {iid!r} is not in the images list")
    if _field(a, "category_id", where, "id") not in cats:
      raise ConvertError(f"{where}: category_id {a['category_id']!r} is not in the categories")
    if a.get("iscrowd", 0) not in (0, 1):
      raise ConvertError(f"{where}: iscrowd {a['iscrowd']!r} is not 0 or 1")
    by_image.setdefault(iid, []).append(a)

  items, left_out, ids = [], [], {}
  for iid, img in entries.items():
    where = f"{path}: image id {iid}"
    rel, file_path = relative_id(images_dir, data_root, img["file_name"], where)
    if rel in ids:
      raise ConvertError(f"{where}: file_name {img['file_name']!r} is the file of image id "
                         f"{ids[rel]} too")
    ids[rel] = iid
    width, height = image_size(file_path, where)
    if (width, height) != (img["width"], img["height"]):
      raise ConvertError(f"{where}: {file_path} is {width}x{height}; the JSON says "
                         f"{img['width']}x{img['height']}")
    anns = by_image.get(iid, [])
    if not anns:
      left_out.append(LeftOut(rel, where, "no annotation", "no annotation"))
      continue
    areas: Dict[str, float] = {}
    boxes = []
    for a in anns:
      a_where = f"{path}: annotation id {a['id']} (image id {iid})"
      boxes.append(_bbox(a, a_where))
      name = cats[a["category_id"]]
      areas[name] = areas.get(name, 0.0) + _area(a, boxes[-1])
    label, why = choose_label(areas, ratio)
    if label is None:
      left_out.append(LeftOut(rel, where, "ambiguous", why))
      continue
    item = Item(rel, label, width, height, where)
    for a, (x, y, w, h) in zip(anns, boxes):
      if cats[a["category_id"]] != label:
        continue
      a_where = f"{path}: annotation id {a['id']} (image id {iid})"
      crowd = a.get("iscrowd", 0) == 1
      box = outward(x, y, x + w, y + h)
      problem = box_problem(box, width, height)
      if problem:
        raise ConvertError(f"{a_where}: bbox {[x, y, w, h]} -> {problem}")
      if masks:
        target = item.ignore if crowd else item.masks
        key = str(a["id"]) if _SAFE_KEY.fullmatch(str(a["id"])) else f"i{len(target)}"
        target.append(Instance(key, _segmentation(a, a_where, height, width)))
      if not (masks and crowd):
        item.boxes.append(box)
    if masks and not item.masks:
      left_out.append(LeftOut(rel, where, "only crowd", f"only crowd annotations (iscrowd=1) "
                              f"of {label!r}: no instance mask"))
      continue
    items.append(item)
  return items, left_out
