"""fcam_jax.api on a tiny trained workdir: any images in, maps at their sizes, targets
honoured, boxes, RGB overlays, and no recompilation between calls."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcam_jax import api
from fcam_jax import cams
from fcam_jax import metrics
from fcam_jax import models
from tests.conftest import REPO

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture(scope="module")
def localizer(trained_workdir):
  return api.load(trained_workdir[0], batch_size=4)


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (45, 60, 3), dtype=np.uint8),              # uint8 RGB
          rng.integers(0, 256, (70, 40), dtype=np.uint8),                 # grey HxW
          rng.random((33, 33, 3)).astype(np.float32),                     # float in [0, 1]
          rng.integers(0, 256, (20, 90, 4), dtype=np.uint8),              # RGBA
          (rng.random((50, 50, 1)) * 255).astype(np.float64)]             # float 0..255, HxWx1


def test_maps_are_at_each_images_size_and_in_0_1(localizer):
  images = _images()
  out = localizer(images)
  assert out.method == "fcam" and out.threshold == localizer.threshold
  assert [m.shape for m in out.maps] == [im.shape[:2] for im in images]
  assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in out.maps)
  assert out.probabilities.shape == (5, localizer.config.model.num_classes)
  np.testing.assert_allclose(out.probabilities.sum(1), 1, rtol=1e-5)
  np.testing.assert_array_equal(out.classes, out.probabilities.argmax(1))
  for m, b in zip(out.maps, out.boxes):  # the evaluator's largest-contour box at the threshold
    ref = metrics.largest_contour_box(api.quantize(m), out.threshold)
    assert b == (None if ref is None else [int(v) for v in ref])


def test_grey_and_float_images_are_read_as_their_uint8_rgb(localizer):
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  grey = rgb[..., 0]
  same = localizer([grey, np.repeat(grey[..., None], 3, -1), rgb, rgb / 255.0])
  np.testing.assert_array_equal(same.maps[0], same.maps[1])
  np.testing.assert_allclose(same.maps[2], same.maps[3], atol=1e-6)


def test_targets_choose_the_class_of_a_cam(localizer, trained_workdir):
  images = _images()[:3]
  k = localizer.config.model.num_classes
  for targets in ([0, 1, 2], [k - 1, 0, k - 1]):
    out = localizer(images, targets=targets, method="gradcam")
    assert out.method == "gradcam" and out.targets.tolist() == targets
    # The same CAM computed directly for those classes, at the eval size.
    trained = localizer.trained
    resized = jnp.asarray(np.stack([localizer.resize(im) for im in images]))
    x = resized
    clf = trained.variables["classifier"]
    logits, taps = trained.classifier.apply(clf, models.imagenet_standardize(x))
    cfg = localizer.config.cam.copy_and_resolve_references()
    cfg.method = "gradcam"
    ref = np.asarray(cams.upsampled_maps(trained.classifier, clf, taps, x, jnp.asarray(targets),
                                         None, cfg))
    for i, im in enumerate(images):
      np.testing.assert_allclose(out.maps[i], api.resize_map(ref[i], *im.shape[:2]), atol=2e-5)
  a = localizer(images, targets=[0, 0, 0], method="cam").maps
  b = localizer(images, targets=[1, 1, 1], method="cam").maps
  assert max(np.abs(x - y).max() for x, y in zip(a, b)) > 1e-3
  default = localizer(images, method="cam")
  np.testing.assert_array_equal(default.targets, default.classes)  # default: predicted class


def test_repeated_calls_of_any_size_do_not_recompile(localizer):
  localizer(_images(0)[:3])  # compiles the F-CAM function (batches of 4, padded)
  events = []
  listener = lambda event, duration, **kw: (
      events.append(kw.get("fun_name")) if event == COMPILE_EVENT else None)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for n, seed in ((1, 1), (5, 2), (9, 3)):  # 1, 2 and 3 batches of new sizes
      images = [np.random.default_rng([seed, i]).integers(0, 256, (20 + 7 * i, 31 + i, 3),
                                                           dtype=np.uint8) for i in range(n)]
      assert len(localizer(images).maps) == n
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not events, f"{len(events)} compilations in 3 calls: {events}"


def test_overlay_is_rgb_with_the_box_in_green():
  image = np.zeros((30, 40, 3), np.uint8)
  hot = np.ones((30, 40), np.float32)  # JET at 1.0 is dark red
  out = api.overlay(image, hot, [5, 5, 20, 20])
  assert out.shape == (30, 40, 3) and out.dtype == np.uint8
  assert out[15, 30, 0] > 40 and out[15, 30, 2] == 0  # red channel first
  assert tuple(out[5, 10]) == (0, 255, 0)  # the box's edge
  assert api.overlay(image, np.zeros((15, 20), np.float32)).shape == (30, 40, 3)  # resized


def test_bad_inputs_are_clear(localizer, trained_workdir, tmp_path):
  with pytest.raises(ValueError, match="2 targets for 3 images"):
    localizer(_images()[:3], targets=[0, 1], method="cam")
  with pytest.raises(ValueError, match="targets must be classes in"):
    localizer(_images()[:1], targets=[99], method="cam")
  with pytest.raises(ValueError, match="method='nope'"):
    localizer(_images()[:1], method="nope")
  with pytest.raises(ValueError, match="HxW, HxWx1, HxWx3 or HxWx4"):
    localizer([np.zeros((4, 4, 2), np.uint8)])
  with pytest.raises(ValueError, match="threshold"):
    localizer(_images()[:1], threshold=1.5)


def test_the_example_script_runs(trained_workdir, tmp_path):
  out = subprocess.run([sys.executable, "examples/localize_images.py",
                        f"--workdir={trained_workdir[0]}", f"--out={tmp_path}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  assert "-> map (120, 200)" in out.stdout
  assert sorted(os.listdir(tmp_path)) == ["0.png", "1.png", "2.png", "3.png"]
