r"""Time of one stage-2 train step (frozen encoder + CAM seeds + decoder + losses + SGD).

  python benchmarks/bench_stage2_step.py [--backbone=small] [--size=64] [--batch=32]
      [--method=cam] [--cells=0.5,1.0] [--repeats=5]

Random weights and images (the step's cost does not depend on them); the step is
the one training uses (`stage2.fcam_train_step`, pmapped over all local
devices). Prints ms per step for each CRF grid cell and with the CRF off.
"""

import functools
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fcam_jax import config_lib, models, optim, parallel, stage2, steps  # noqa: E402
from fcam_jax.models import decoder as decoder_lib  # noqa: E402

_BACKBONE = flags.DEFINE_string("backbone", "small", "Backbone.")
_SIZE = flags.DEFINE_integer("size", 64, "Input side.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch.")
_METHOD = flags.DEFINE_string("method", "cam", "CAM method for the seeds.")
_CELLS = flags.DEFINE_list("cells", ["0.5", "1.0"], "CRF grid cells to time.")
_SIGMA_XY = flags.DEFINE_float("sigma_xy", 30.0, "CRF sigma_xy (30 = the synthetic recipe).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps.")


def main(_):
  config = config_lib.base_config()
  config.model.backbone, config.model.num_classes = _BACKBONE.value, 5
  config.cam.method = _METHOD.value
  config.fcam.crf.sigma_xy = _SIGMA_XY.value
  config.fcam.seeds.erosion = 3 if _SIZE.value < 128 else 11
  backbone_cls = models.backbone_class(_BACKBONE.value)
  classifier = models.build_classifier(config.model)
  decoder = decoder_lib.decoder_for(backbone_cls, bn_axis_name=parallel.AXIS)
  x = jnp.zeros((1, _SIZE.value, _SIZE.value, 3))
  clf_vars = jax.jit(classifier.init)(jax.random.key(0), x)
  taps = jax.eval_shape(lambda: classifier.apply(clf_vars, x)[1])
  dtaps = [jnp.zeros(taps[n].shape) for n in backbone_cls.DECODER_TAPS]
  dec_vars = jax.jit(decoder.init, static_argnums=2)(jax.random.key(1), dtaps, x.shape[1:3])
  tx = optim.sgd(config.stage2, 100)
  rng = np.random.default_rng(0)
  batch = parallel.shard({
      "image": rng.integers(0, 256, (_BATCH.value, _SIZE.value, _SIZE.value, 3), dtype=np.uint8),
      "label": rng.integers(0, 5, _BATCH.value).astype(np.int32),
      "index": np.arange(_BATCH.value, dtype=np.int32)})
  clf_vars_r = parallel.replicate(clf_vars)
  print(f"backbone={_BACKBONE.value} size={_SIZE.value} batch={_BATCH.value} "
        f"method={_METHOD.value} devices={jax.local_device_count()} ({jax.devices()[0].platform})")
  print(f"{'CRF':>12} {'compile+1st s':>14} {'ms/step':>9}")
  for cell in [float(c) for c in _CELLS.value] + [None]:
    cfg = config.copy_and_resolve_references()
    cfg.fcam.crf.enabled = cell is not None
    cfg.fcam.crf.grid_cell = cell or 1.0
    state = steps.TrainState(
        step=jnp.array(0, jnp.int32), params=dec_vars["params"],
        batch_stats=dec_vars["batch_stats"], opt_state=tx.init(dec_vars["params"]),
        rng=jax.random.key_data(jax.random.key(2)), aux={"elb_t": jnp.array(1.0)})
    step = jax.pmap(functools.partial(stage2.fcam_train_step, classifier=classifier,
                                      decoder=decoder, tx=tx, config=cfg),
                    axis_name=parallel.AXIS)
    state_r = parallel.replicate(state)
    t = time.time()
    state_r, m = step(state_r, batch, clf_vars_r)
    jax.block_until_ready(m)
    first = time.time() - t
    t = time.time()
    for _ in range(_REPEATS.value):
      state_r, m = step(state_r, batch, clf_vars_r)
    jax.block_until_ready(m)
    label = f"cell {cell}" if cell is not None else "off"
    print(f"{label:>12} {first:14.1f} {(time.time() - t) / _REPEATS.value * 1000:9.0f}")


if __name__ == "__main__":
  app.run(main)
