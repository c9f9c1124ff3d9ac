# %% [markdown]
# # Localize objects in your images with a trained F-CAM workdir
#
# Run as a script (`python examples/localize_images.py --workdir=/tmp/fcam_synthetic
# --out=/tmp/overlays`) or cell by cell in a notebook. The workdir comes from
# `python -m fcam_jax.main --config=configs/synthetic.py --workdir=/tmp/fcam_synthetic`.

# %%
import argparse
import os

import numpy as np
from PIL import Image

from fcam_jax import api
from fcam_jax.data import synthetic

parser = argparse.ArgumentParser()
parser.add_argument("--workdir", default="/tmp/fcam_synthetic")
parser.add_argument("--out", default="/tmp/fcam_overlays")
args, _ = parser.parse_known_args()

# %% Load the trained classifier and F-CAM decoder (the checkpoints validation chose).
localizer = api.load(args.workdir)
print("checkpoint:", localizer.checkpoint["stage"], "step", localizer.checkpoint["step"],
      "| box threshold", round(localizer.threshold, 3))

# %% A few images of different sizes: here synthetic ones (class k has glyph k), with
# their true class; use your own arrays (HxWx3 uint8, grey or float) just the same.
rng = np.random.default_rng(0)
images, labels = [], []
for k, size in enumerate((96, 128, 160)):
  image, _ = synthetic.render(rng, size, k)
  images.append(image)
  labels.append(k)
images.append(np.asarray(Image.fromarray(images[0]).resize((200, 120))))  # not square
labels.append(0)

# %% F-CAM maps (class-agnostic), at each image's own size, with boxes and classes.
fcam = localizer(images)
for image, m, box, cls in zip(images, fcam.maps, fcam.boxes, fcam.classes):
  print(f"image {image.shape[:2]} -> map {m.shape}, predicted class {cls}, box {box}")

# %% The baseline CAM of the true class (as the WSOL evaluation computes it), or any
# other CAM method: gradcam, gradcampp, layercam, scorecam, ...
cam = localizer(images, targets=labels, method="cam")
gradcam = localizer(images, targets=labels, method="gradcam")

# %% Overlays (RGB) of the F-CAM and the CAM with their boxes, side by side.
os.makedirs(args.out, exist_ok=True)
for i, image in enumerate(images):
  row = np.concatenate([api.overlay(image, fcam.maps[i], fcam.boxes[i]),
                        api.overlay(image, cam.maps[i], cam.boxes[i])], axis=1)
  Image.fromarray(row).save(os.path.join(args.out, f"{i}.png"))
print("overlays (F-CAM | CAM) in", args.out)
