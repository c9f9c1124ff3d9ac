"""One image of a WSOL split, as every reader produces it and every evaluator reads it."""

import dataclasses
from typing import Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """An image and its ground truth, in original pixel coordinates.

  `boxes` is (n, 4) float32 `x0, y0, x1, y1` (empty for mask datasets);
  `mask_paths` are the instance masks and `ignore_path` the ignore mask of OpenImages
  ('' = none). `path` is the absolute image path ('' for in-memory datasets).
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
