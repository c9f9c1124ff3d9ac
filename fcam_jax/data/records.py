"""One image of a WSOL split, as every reader produces it and every evaluator reads it;
one problem with an image, as every check reports it; what to do about problems."""

import dataclasses
from typing import Sequence, Tuple

import numpy as np

# `config.data.on_error`: a bad image stops the run ('fail') or is left out and listed ('skip').
ON_ERROR = ("fail", "skip")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """An image and its ground truth, in original pixel coordinates.

  `boxes` is (n, 4) float32 `x0, y0, x1, y1` (empty for mask datasets);
  `mask_paths` are the instance masks and `ignore_path` the ignore mask of OpenImages
  ('' = none). `path` is the absolute image path ('' for in-memory datasets); `where`
  is its entry in the metadata (`.../image_ids.txt:<line>`, '' if none).
  """
  index: int
  image_id: str
  path: str
  label: int
  width: int
  height: int
  boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
  mask_paths: Tuple[str, ...] = ()
  ignore_path: str = ""
  where: str = ""


@dataclasses.dataclass(frozen=True)
class Problem:
  """Something wrong with one image: `where` is `<file>:<line>` of the entry at fault."""
  image_id: str
  where: str
  reason: str

  def __str__(self):
    return f"{self.where}: {self.reason}"


def describe(problems: Sequence[object], limit: int = 10) -> str:
  """The first `limit` problems (Problems or messages), one a line, and how many in all."""
  lines = [str(p) for p in problems[:limit]]
  if len(problems) > limit:
    lines.append(f"... {len(problems)} problems in all ({len(problems) - limit} more not shown)")
  elif len(problems) > 1:
    lines.append(f"({len(problems)} problems in all)")
  return "\n".join(lines)
