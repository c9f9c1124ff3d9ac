"""Pascal VOC XML annotations (one file per image) -> one split of boxes.

Each `<annotation>` names its image in `<filename>` (under --images; without it, or with
no such file, `<xml stem>.jpg`/`.jpeg`/`.png`/... is looked for) and holds `<object>`s
with a `<name>`, a `<bndbox>` of `xmin, ymin, xmax, ymax` and optionally `<difficult>`.

Coordinates. Pascal VOC numbers pixels from 1 and its boxes include both end pixels, so
`xmin=1, xmax=W` is the whole width; as pixel edges (docs/design.md §8: `x1 = x0 + width`)
that is `x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax` (--first_pixel=1, default).
ImageNet's XMLs number pixels from 0 (xmax at most W - 1): --first_pixel=0 gives
`x0 = xmin, y0 = ymin, x1 = xmax + 1, y1 = ymax + 1`. (wsolevaluation's own ILSVRC metadata
copies those values unchanged, one pixel narrower; reproduce the ILSVRC benchmark with
its metadata, not with this.) Fractional coordinates are rounded outwards to whole pixels.

Label rule as for COCO: the class of largest total box area, an image where another
class covers at least --ambiguous_ratio of it left out as ambiguous, and an image
without objects left out; boxes kept: the chosen class's objects. `<difficult>1`
objects (hard to recognise, still correctly labelled) count like any other with
--difficult=keep (default: scoring takes the best-matching box, so an extra box never
hurts); --difficult=drop ignores them before the label rule (an image with only
difficult objects is then left out).
"""

import os
from typing import Dict, List, Sequence, Tuple
import xml.etree.ElementTree as ET
from xml.parsers import expat

import numpy as np

from fcam_jax.data.converters.common import (ConvertError, Item, LeftOut, box_problem,
                                             choose_label, class_name, image_size, outward,
                                             relative_id)

DIFFICULT = ("keep", "drop")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG", ".bmp", ".tif", ".tiff")


class Xml:
  """A parsed XML file: its root, and `at(element)` -> `<file>:<line of the element>`."""

  def __init__(self, path: str):
    self.path = path
    self.lines: Dict[ET.Element, int] = {}
    self.root = self._parse()

  def at(self, el: ET.Element) -> str:
    return f"{self.path}:{self.lines[el]}"

  def _parse(self) -> ET.Element:
    """The tree, each element's line kept; ConvertError with file:line:column if malformed."""
    try:
      with open(self.path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise ConvertError(f"{self.path}: unreadable ({e})") from e
    parser = expat.ParserCreate()
    stack: List[ET.Element] = []
    roots: List[ET.Element] = []

    def start(tag, attrs):
      el = ET.Element(tag, attrs)
      (stack[-1].append(el) if stack else roots.append(el))
      stack.append(el)
      self.lines[el] = parser.CurrentLineNumber

    def text(data):
      stack[-1].text = (stack[-1].text or "") + data

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: stack.pop()
    parser.CharacterDataHandler = text
    try:
      parser.Parse(data, True)
    except expat.ExpatError as e:
      raise ConvertError(f"{self.path}:{e.lineno}:{e.offset + 1}: malformed XML "
                         f"({expat.ErrorString(e.code)})") from None
    return roots[0]

  def text(self, el: ET.Element, tag: str, required: bool = True) -> str:
    """The stripped text of el's child <tag> ('' if absent and not required)."""
    child = el.find(tag)
    value = (child.text or "").strip() if child is not None else ""
    if not value and required:
      raise ConvertError(f"{self.at(el)}: <{el.tag}> has no <{tag}>")
    return value

  def number(self, el: ET.Element, tag: str) -> float:
    text = self.text(el, tag)
    try:
      value = float(text)
    except ValueError:
      value = float("nan")
    if not np.isfinite(value):
      raise ConvertError(f"{self.at(el.find(tag))}: <{tag}> {text!r} is not a number")
    return value


def _image_file(xml: Xml, images_dir: str) -> str:
  """The image's name under images_dir: <filename>, else the XML's stem with an extension."""
  name = xml.text(xml.root, "filename", required=False)
  if name and os.path.isfile(os.path.join(images_dir, name)):
    return name
  stem = os.path.splitext(os.path.basename(xml.path))[0]
  for ext in IMAGE_EXTENSIONS:
    if os.path.isfile(os.path.join(images_dir, stem + ext)):
      return stem + ext
  tried = os.path.join(images_dir, name) + " nor " if name else ""
  raise ConvertError(f"{xml.path}: no image file: neither {tried}"
                     f"{os.path.join(images_dir, stem)}"
                     f".{{{','.join(e[1:] for e in IMAGE_EXTENSIONS[:3])},...}} exists")


def _check_size(xml: Xml, path: str, width: int, height: int):
  """A <size> that gives a size must give the image file's (else the boxes are elsewhere)."""
  size = xml.root.find("size")
  if size is None:
    return
  w, h = (xml.text(size, t, required=False) for t in ("width", "height"))
  if w.isdigit() and h.isdigit() and int(w) and int(h) and (int(w), int(h)) != (width, height):
    raise ConvertError(f"{xml.at(size)}: <size> {w}x{h}; the image {path} is {width}x{height}")


def _box(xml: Xml, obj: ET.Element, first_pixel: int, width: int, height: int):
  box_el = obj.find("bndbox")
  if box_el is None:
    raise ConvertError(f"{xml.at(obj)}: <object> has no <bndbox>")
  xmin, ymin, xmax, ymax = (xml.number(box_el, t) for t in ("xmin", "ymin", "xmax", "ymax"))
  if first_pixel == 1:
    box = outward(xmin - 1, ymin - 1, xmax, ymax)
  else:
    box = outward(xmin, ymin, xmax + 1, ymax + 1)
  problem = box_problem(box, width, height)
  if problem:
    hint = ""
    if first_pixel == 1 and min(xmin, ymin) == 0:
      hint = " (a 0 coordinate: are these XMLs 0-based? --first_pixel=0)"
    elif first_pixel == 0 and (xmax == width or ymax == height):
      hint = " (xmax = width: are these XMLs 1-based? --first_pixel=1)"
    raise ConvertError(f"{xml.at(box_el)}: <bndbox> {xmin:g},{ymin:g},{xmax:g},{ymax:g} -> "
                       f"{problem}{hint}")
  return box


def _difficult(xml: Xml, obj: ET.Element) -> bool:
  text = xml.text(obj, "difficult", required=False) or "0"
  if text not in ("0", "1"):
    raise ConvertError(f"{xml.at(obj.find('difficult'))}: <difficult> {text!r} is not 0 or 1")
  return text == "1"


def xml_files(annotations: str, ids_file: str = "") -> List[str]:
  """The XMLs of a split: those the ids file names (`<stem>` first on each line), or all."""
  if not os.path.isdir(annotations):
    raise ConvertError(f"{annotations}: no such folder of XML annotations")
  if not ids_file:
    names = sorted(f for f in os.listdir(annotations) if f.lower().endswith(".xml"))
    if not names:
      raise ConvertError(f"{annotations}: no .xml file")
    return [os.path.join(annotations, f) for f in names]
  try:
    with open(ids_file, encoding="utf-8") as f:
      rows = [(n, line.split()[0]) for n, line in enumerate(f, 1) if line.strip()]
  except OSError as e:
    raise ConvertError(f"{ids_file}: unreadable ({e})") from e
  paths = []
  for n, stem in rows:
    path = os.path.join(annotations, stem + ".xml")
    if not os.path.isfile(path):
      raise ConvertError(f"{ids_file}:{n}: {path} not found")
    paths.append(path)
  if not paths:
    raise ConvertError(f"{ids_file}: no id")
  return paths


def read(xmls: Sequence[str], images_dir: str, data_root: str, first_pixel: int = 1,
         difficult: str = "keep", ratio: float = 0.5) -> Tuple[List[Item], List[LeftOut]]:
  """The XMLs' images in order: the kept ones as Items, and the ones left out."""
  items, left_out, ids = [], [], {}
  for path in xmls:
    xml = Xml(path)
    if xml.root.tag != "annotation":
      raise ConvertError(f"{xml.at(xml.root)}: root element <{xml.root.tag}>; expected "
                         "<annotation>")
    rel, image = relative_id(images_dir, data_root, _image_file(xml, images_dir), path)
    if rel in ids:
      raise ConvertError(f"{path}: its image {rel!r} is {ids[rel]}'s too (one XML per image)")
    ids[rel] = path
    width, height = image_size(image, path)
    _check_size(xml, image, width, height)
    objects, areas, dropped = [], {}, 0
    for obj in xml.root.findall("object"):
      label = class_name(xml.text(obj, "name"), xml.at(obj))
      box = _box(xml, obj, first_pixel, width, height)
      if _difficult(xml, obj) and difficult == "drop":
        dropped += 1
        continue
      objects.append((label, box, xml.at(obj)))
      areas[label] = areas.get(label, 0) + (box[2] - box[0]) * (box[3] - box[1])
    if not objects:
      if dropped:
        left_out.append(LeftOut(rel, path, "only difficult",
                                f"only difficult objects ({dropped}; --difficult=drop)"))
      else:
        left_out.append(LeftOut(rel, path, "no object", "no object"))
      continue
    label, why = choose_label(areas, ratio)
    if label is None:
      left_out.append(LeftOut(rel, path, "ambiguous", why))
      continue
    mine = [(box, where) for name, box, where in objects if name == label]
    items.append(Item(rel, label, width, height, mine[0][1], boxes=[b for b, _ in mine]))
  return items, left_out
