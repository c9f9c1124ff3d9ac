r"""Throughput of every CAM method (fcam_jax.cams.compute), jitted, after warm-up.

  python benchmarks/bench_cams.py [--backbone=resnet50] [--batch=8] [--size=224]
      [--methods=cam,gradcam,...] [--tap=layer4] [--repeats=3] [--warmup=1]

Random weights (the speed does not depend on them), random normalized images, a
random label per image. `compile s` is the AOT compile of the jitted
`compute(method, ...)` (inputs -> raw maps; the forward pass included); `images/s`
is batch * repeats / wall time of `repeats` calls after `warmup` calls. The first
row, `forward`, is the classifier's forward pass alone, for scale. ScoreCAM runs
C forward passes per image (C = the tap's channels), so expect forward / C.
"""

import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_util  # noqa: E402  pylint: disable=g-import-not-at-top
from fcam_jax import cams  # noqa: E402
from fcam_jax.models import Classifier, backbone_class  # noqa: E402

_BACKBONE = flags.DEFINE_string("backbone", "resnet50", "Backbone name (fcam_jax.models.BACKBONES).")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per call.")
_SIZE = flags.DEFINE_integer("size", 224, "Input side.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 200, "Classes of the head.")
_METHODS = flags.DEFINE_list("methods", list(cams.METHODS), "CAM methods to time.")
_TAP = flags.DEFINE_string("tap", "", "Tap ('' = the backbone's CAM_TAP).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per method.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls before timing.")
_SCORECAM_CHUNK = flags.DEFINE_integer("scorecam_chunk", 32, "config.cam.scorecam_chunk.")
_ABLATIONCAM_CHUNK = flags.DEFINE_integer("ablationcam_chunk", 32, "config.cam.ablationcam_chunk.")


def time_fn(fn, args, warmup, repeats):
  """(compile seconds, seconds per call)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(compiled(*args))
  return compile_s, (time.perf_counter() - start) / repeats


def main(argv):
  del argv
  backbone = backbone_class(_BACKBONE.value)()
  model = Classifier(backbone=backbone, num_classes=_NUM_CLASSES.value)
  b, size = _BATCH.value, _SIZE.value
  rs = np.random.RandomState(1)
  images = jnp.asarray(rs.randn(b, size, size, 3), jnp.float32)
  labels = jnp.asarray(rs.randint(0, _NUM_CLASSES.value, b), jnp.int32)
  key = jax.random.PRNGKey(0)
  variables = bench_util.random_variables(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), images[:1]))
  tap = _TAP.value or backbone.CAM_TAP
  options = dict(cams.DEFAULT_OPTIONS, scorecam_chunk=_SCORECAM_CHUNK.value,
                 ablationcam_chunk=_ABLATIONCAM_CHUNK.value)
  _, taps = jax.eval_shape(model.apply, variables, images)
  print(f"backbone={_BACKBONE.value} batch={b} size={size} tap={tap} "
        f"{tuple(taps[tap].shape[1:])} device={jax.devices()[0].device_kind} "
        f"cpus={os.cpu_count()} repeats={_REPEATS.value} warmup={_WARMUP.value}")
  print(f"{'method':<16} {'images/s':>10} {'s/batch':>9} {'compile s':>10}")
  rows = [("forward", lambda v, x, y, k: model.apply(v, x)[0])]
  for method in _METHODS.value:
    rows.append((method, lambda v, x, y, k, m=method: cams.compute(
        m, model, v, x, y, tap=tap, rng=k, options=options)))
  for name, fn in rows:
    compile_s, per_call = time_fn(fn, (variables, images, labels, key), _WARMUP.value,
                                  _REPEATS.value)
    print(f"{name:<16} {b / per_call:>10.2f} {per_call:>9.3f} {compile_s:>10.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
