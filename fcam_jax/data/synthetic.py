"""The built-in synthetic WSOL dataset, stored as a TFDS dataset (array_record).

Each image shows one object on a textured background. The object's body (a wobbly
ellipse with a coherent colour and texture) is shared by every class; the class is
given only by a small glyph (shape + colour, on a dark badge) somewhere on the body. A classifier
needs only the glyph, so a plain CAM lights the glyph, not the object: the
situation F-CAM exists for. Ground truth: the object's mask and its box.

Generation is deterministic in (seed, split, index) and takes seconds. The builder
config name encodes every generation parameter, so datasets never collide.
"""

import dataclasses
import io
from typing import Dict, Iterator, Tuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

# 7x7 glyph templates, one per class (at most len(GLYPHS) classes).
_GLYPH_ROWS = {
    "cross": ["...#...", "...#...", "...#...", "#######", "...#...", "...#...", "...#..."],
    "ring": ["#######", "#.....#", "#.....#", "#.....#", "#.....#", "#.....#", "#######"],
    "x": ["#.....#", ".#...#.", "..#.#..", "...#...", "..#.#..", ".#...#.", "#.....#"],
    "bars": ["#######", ".......", "#######", ".......", "#######", ".......", "#######"],
    "tee": ["#######", "#######", "...#...", "...#...", "...#...", "...#...", "...#..."],
    "dots": ["#.#.#.#", ".......", "#.#.#.#", ".......", "#.#.#.#", ".......", "#.#.#.#"],
    "diamond": ["...#...", "..###..", ".#####.", "#######", ".#####.", "..###..", "...#..."],
    "ell": ["##.....", "##.....", "##.....", "##.....", "##.....", "#######", "#######"],
}
GLYPHS = tuple(_GLYPH_ROWS)
_GLYPH_COLOURS = np.array([(230, 30, 30), (30, 60, 230), (250, 220, 20), (20, 200, 60),
                           (200, 40, 220), (20, 220, 220), (255, 140, 0), (245, 245, 245)], np.float32)
_BADGE = np.array((35, 35, 35), np.float32)
SPLITS = ("train", "val", "test")


def _glyph(name: str) -> np.ndarray:
  return np.array([[c == "#" for c in row] for row in _GLYPH_ROWS[name]], bool)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Low-frequency noise in [0, 1]: bilinear upsampling of a cells x cells grid."""
  grid = rng.random((cells, cells)).astype(np.float32)
  img = Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR)
  return np.asarray(img)


def render(rng: np.random.Generator, size: int, label: int) -> Tuple[np.ndarray, np.ndarray]:
  """One (image uint8 (S,S,3), object mask bool (S,S)) for class `label`."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

  # Background: a random-direction grating between two muted colours, plus noise.
  c0, c1 = rng.uniform(40, 150, (2, 3)).astype(np.float32)
  theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.45)
  grating = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)))
  blend = 0.6 * grating + 0.4 * _smooth_noise(rng, size, 5)
  image = c0 + (c1 - c0) * blend[..., None]

  # Object: an ellipse with a wobbly boundary.
  cy, cx = rng.uniform(0.25, 0.75, 2) * size
  ry, rx = rng.uniform(0.12, 0.34, 2) * size
  phi = rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  u = (dx * np.cos(phi) + dy * np.sin(phi)) / rx
  v = (-dx * np.sin(phi) + dy * np.cos(phi)) / ry
  angle = np.arctan2(v, u)
  wobble = 1.0 + 0.12 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi)) \
               + 0.06 * np.sin(5 * angle + rng.uniform(0, 2 * np.pi))
  mask = np.sqrt(u ** 2 + v ** 2) <= wobble

  # Body: a light, saturated colour with a fine spotted texture, shared by all classes.
  body = rng.uniform(170, 250, 3).astype(np.float32)
  body[rng.integers(3)] *= 0.55
  spots = (np.sin(0.9 * xx + rng.uniform(0, 6)) * np.sin(0.9 * yy + rng.uniform(0, 6)) > 0.6)
  body_px = body[None, None, :] * (1.0 - 0.18 * spots[..., None])
  image = np.where(mask[..., None], body_px, image)

  # The class glyph on a dark badge, placed where the badge lies inside the object.
  glyph = _glyph(GLYPHS[label])
  scale = max(1, int(size * 0.12 / glyph.shape[0]))
  glyph = np.pad(np.kron(glyph, np.ones((scale, scale), bool)), 1)
  g = glyph.shape[0]
  inside = np.argwhere(_erode_square(mask, g)[: size - g + 1, : size - g + 1]) if g < size else []
  if len(inside):
    y0, x0 = inside[rng.integers(len(inside))]
  else:  # a tiny object: centre the badge on it.
    y0 = int(np.clip(cy - g / 2, 0, size - g))
    x0 = int(np.clip(cx - g / 2, 0, size - g))
  image[y0:y0 + g, x0:x0 + g] = np.where(glyph[..., None], _GLYPH_COLOURS[label], _BADGE)
  mask[y0:y0 + g, x0:x0 + g] = True

  image = image + rng.normal(0, 6, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8), mask


def _erode_square(mask: np.ndarray, k: int) -> np.ndarray:
  """out[y, x] = all(mask[y:y+k, x:x+k]) (top-left anchored), via a summed-area table."""
  s = np.pad(mask.astype(np.int32), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
  h, w = mask.shape
  out = np.zeros_like(mask)
  win = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
  out[: h - k + 1, : w - k + 1] = win == k * k
  return out


def box_of(mask: np.ndarray) -> np.ndarray:
  """(1, 4) float32 x0, y0, x1, y1 with x1 = last column + 1 (CUB's x + w convention)."""
  ys, xs = np.nonzero(mask)
  return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  num_classes: int = 5
  image_size: int = 80
  train_size: int = 1000
  val_size: int = 200
  test_size: int = 200
  seed: int = 0


def config_for(num_classes: int, image_size: int, sizes: Tuple[int, int, int],
               seed: int) -> SyntheticConfig:
  if not 2 <= num_classes <= len(GLYPHS):
    raise ValueError(f"the synthetic dataset has 2..{len(GLYPHS)} classes, not {num_classes}")
  if image_size < 24:
    raise ValueError(f"synthetic images must be at least 24 pixels, not {image_size}")
  name = f"c{num_classes}_s{image_size}_n{sizes[0]}-{sizes[1]}-{sizes[2]}_seed{seed}"
  return SyntheticConfig(name=name, num_classes=num_classes, image_size=image_size,
                         train_size=sizes[0], val_size=sizes[1], test_size=sizes[2], seed=seed)


class FcamSynthetic(tfds.core.GeneratorBasedBuilder):
  """fcam_jax's synthetic WSOL dataset (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Object body shared across classes, class-specific glyph."}
  BUILDER_CONFIGS = [config_for(5, 80, (1000, 200, 200), 0)]

  def _info(self) -> tfds.core.DatasetInfo:
    size, k = self.builder_config.image_size, self.builder_config.num_classes
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "mask": tfds.features.Image(shape=(size, size, 1)),
            "label": tfds.features.ClassLabel(names=list(GLYPHS[:k])),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "image_id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    sizes = dict(train=cfg.train_size, val=cfg.val_size, test=cfg.test_size)
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, n: int) -> Iterator[Tuple[str, Dict]]:
    cfg = self.builder_config
    for i in range(n):
      yield f"{split}/{i:05d}", example(cfg.seed, split, i, cfg.num_classes, cfg.image_size)


def example(seed: int, split: str, index: int, num_classes: int, size: int) -> Dict:
  """The encoded example `index` of `split`; classes are balanced (index mod K)."""
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  label = index % num_classes
  image, mask = render(rng, size, label)
  return {"image": _png(image), "mask": _png(mask.astype(np.uint8) * 255),
          "label": label, "boxes": box_of(mask), "image_id": f"{split}/{index:05d}.png"}


def prepare(data_dir: str, num_classes: int = 5, image_size: int = 80,
            sizes: Tuple[int, int, int] = (1000, 200, 200), seed: int = 0) -> FcamSynthetic:
  """Generates the dataset into `data_dir` unless it is already there."""
  config = config_for(num_classes, image_size, sizes, seed)
  if any(c.name == config.name for c in FcamSynthetic.BUILDER_CONFIGS):
    config = config.name  # tfds refuses a custom config named like a built-in one.
  builder = FcamSynthetic(data_dir=data_dir, file_format="array_record", config=config)
  tfds.disable_progress_bar()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      verify_ssl=False, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder
