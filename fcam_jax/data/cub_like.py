"""A CUB_200_2011-format release of synthetic images: the real data path without the data.

`write_release(root)` writes `root/images/<class>/<name>.jpg` (JPEG files of CUB's
typical 500x375 size by default) and the release's four tables (images.txt,
image_class_labels.txt, train_test_split.txt, bounding_boxes.txt), exactly what
`python -m fcam_jax.data.prepare_cub --cub_root=root` reads. The images are the
synthetic dataset's (fcam_jax.data.synthetic.render): an object whose class is given by
a small glyph, its box the ground truth. For tests, benchmarks and the accelerator check.
"""

import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from fcam_jax.data import synthetic


def write_release(root: str, num_classes: int = 3, train_per_class: int = 8,
                  test_per_class: int = 4, size: Tuple[int, int] = (500, 375),
                  quality: int = 90, seed: int = 0) -> int:
  """Writes the release under `root`; returns the number of images. `size` is (W, H)."""
  if not 2 <= num_classes <= len(synthetic.GLYPHS):
    raise ValueError(f"num_classes={num_classes}: 2..{len(synthetic.GLYPHS)}")
  width, height = size
  side = max(width, height)
  tables = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": [],
            "bounding_boxes.txt": []}
  k = 0
  for label in range(num_classes):
    folder = f"{label + 1:03d}.Glyph_{synthetic.GLYPHS[label]}"
    os.makedirs(os.path.join(root, "images", folder), exist_ok=True)
    for is_train, count in ((1, train_per_class), (0, test_per_class)):
      for _ in range(count):
        k += 1
        image, mask = synthetic.render(np.random.default_rng([seed, k]), side, label)
        if (width, height) != (side, side):
          image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
          mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
        x0, y0, x1, y1 = synthetic.box_of(mask)[0]
        rel = f"{folder}/Glyph_{synthetic.GLYPHS[label]}_{k:05d}.jpg"
        Image.fromarray(image).save(os.path.join(root, "images", rel), quality=quality)
        tables["images.txt"].append(f"{k} {rel}")
        tables["image_class_labels.txt"].append(f"{k} {label + 1}")
        tables["train_test_split.txt"].append(f"{k} {is_train}")
        tables["bounding_boxes.txt"].append(f"{k} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
  write_tables(root, tables)
  return k


def write_tables(root: str, tables: Dict[str, List[str]]):
  """Writes each table (`{file name: lines}`) of a release into `root`."""
  for name, lines in tables.items():
    with open(os.path.join(root, name), "w") as f:
      f.write("".join(line + "\n" for line in lines))
