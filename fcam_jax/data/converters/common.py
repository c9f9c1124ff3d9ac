"""What every reader produces (one Item per image), the label rule and the box conventions.

Boxes are written as pixel edges: `x0, y0` the top-left corner of the first pixel,
`x1, y1` the bottom-right corner of the last one, so a box of the whole W x H image is
`0,0,W,H` and `x1 - x0` is the width in pixels. That is the convention of the
benchmark's CUB metadata (`x + w`) and of the boxes the evaluator draws around a score
map (`max + 1`), so a prediction equal to the annotated pixels matches it exactly.
"""

import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fcam_jax.data import images

DEFAULT_AMBIGUOUS_RATIO = 0.5
# Float noise in annotations (639.99999 for 640) is absorbed before rounding outwards.
_EDGE_DECIMALS = 3


class ConvertError(ValueError):
  """Bad input; the message names the file and line (or the JSON id)."""


@dataclasses.dataclass
class Instance:
  """One instance mask: `key` names its PNG; `render()` -> bool (H, W), raising ConvertError."""
  key: str
  render: Callable[[], np.ndarray]


@dataclasses.dataclass
class Item:
  """One image of a split, as a reader found it.

  `boxes` are (x0, y0, x1, y1) pixel edges; `masks` its instance masks and `ignore` the
  regions (crowds) to leave out of the mask score, both only with --masks; `where` is
  the input location that defines the image (`file:line`, `file: image id N`).
  """
  image_id: str
  label: str
  width: int
  height: int
  where: str
  boxes: List[Tuple[float, float, float, float]] = dataclasses.field(default_factory=list)
  masks: List[Instance] = dataclasses.field(default_factory=list)
  ignore: List[Instance] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LeftOut:
  """An image not written, and why (listed next to the output, never dropped silently).

  `kind` is the reason's short name, counted in the summary line ('no annotation',
  'ambiguous', 'only crowd', 'empty masks', 'only difficult').
  """
  image: str
  where: str
  kind: str
  reason: str


def choose_label(areas: Dict[str, float], ratio: float) -> Tuple[Optional[str], str]:
  """(class, '') by the label rule, or (None, why the image is ambiguous).

  The label is the class of largest total annotated area; the image is ambiguous when
  another class covers at least `ratio` times that area (ties always are).
  """
  ranked = sorted(areas.items(), key=lambda kv: (-kv[1], kv[0]))
  (first, a1), rest = ranked[0], ranked[1:]
  if rest and rest[0][1] >= ratio * a1:
    second, a2 = rest[0]
    return None, (f"ambiguous label: {first!r} covers {a1:g} px^2, {second!r} {a2:g} px^2 "
                  f"(at least {ratio:g} of it)")
  return first, ""


def check_ratio(ratio: float) -> float:
  if not 0 < ratio <= 1:
    raise ValueError(f"--ambiguous_ratio={ratio:g}: must be in (0, 1]")
  return ratio


def outward(x0: float, y0: float, x1: float, y1: float) -> Tuple[int, int, int, int]:
  """The smallest whole-pixel box holding a float one (after rounding to 1e-3 pixel)."""
  r = lambda v: round(v, _EDGE_DECIMALS)
  return (math.floor(r(x0)), math.floor(r(y0)), math.ceil(r(x1)), math.ceil(r(y1)))


def box_problem(box: Sequence[float], width: int, height: int) -> str:
  """Why a pixel-edge box is unusable in a width x height image ('' if it is fine)."""
  x0, y0, x1, y1 = box
  text = f"box {x0:g},{y0:g},{x1:g},{y1:g}"
  if not all(np.isfinite(v) for v in box):
    return f"{text} is not finite"
  if x1 <= x0 or y1 <= y0:
    return f"{text} is empty (needs x1 > x0 and y1 > y0)"
  if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
    return f"{text} is outside the {width}x{height} image (boxes are not clipped)"
  return ""


def number_text(v: float) -> str:
  """A coordinate as written: whole numbers without a decimal point, others exactly."""
  v = float(v)
  return str(int(v)) if v.is_integer() else repr(v)


def relative_id(images_dir: str, data_root: str, name: str, where: str) -> Tuple[str, str]:
  """(image id relative to data_root, absolute path) of `name` under images_dir."""
  if not name or os.path.isabs(name):
    raise ConvertError(f"{where}: image name {name!r} must be a relative path under --images")
  path = os.path.abspath(os.path.join(images_dir, name))
  rel = os.path.relpath(path, os.path.abspath(data_root)).replace(os.sep, "/")
  if rel == ".." or rel.startswith("../"):
    raise ConvertError(f"{where}: image {path} is outside --data_root={data_root}")
  if "," in rel or "\n" in rel:
    raise ConvertError(f"{where}: image path {rel!r} contains ',' or a newline, which the "
                       "metadata layout cannot hold; rename the file")
  return rel, path


def image_size(path: str, where: str) -> Tuple[int, int]:
  """(width, height) from the image file's header, or ConvertError naming `where`."""
  try:
    return images.image_size(path)
  except images.ImageError as e:
    raise ConvertError(f"{where}: {e}") from e


def class_name(text: str, where: str) -> str:
  """A class name, stripped; it must be one non-empty line."""
  name = text.strip()
  if not name or "\n" in name or "\r" in name:
    raise ConvertError(f"{where}: class name {text!r} must be a non-empty single line")
  return name
