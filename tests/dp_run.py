"""Runs a few stage-1 train steps on all local devices and saves the parameters.

Used by test_train.py under different XLA_FLAGS device counts:
  python tests/dp_run.py OUT.npz
"""

import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcam_jax import models, optim, parallel, steps


def main(out):
  cfg = ml_collections.ConfigDict(dict(backbone="small", num_classes=3))
  model = models.build_classifier(cfg, bn_axis_name=parallel.AXIS)
  key = jax.random.key(0)
  variables = model.init(key, jnp.zeros((1, 32, 32, 3)))
  stage = ml_collections.ConfigDict(dict(lr=0.05, lr_decay_epochs=0, lr_decay_factor=0.1,
                                         momentum=0.9, nesterov=True, weight_decay=1e-4))
  mult = optim.group_multipliers(variables["params"],
                                 optim.classifier_group(models.backbone_class("small")), 10.0)
  tx = optim.sgd(stage, 10, mult)
  state = steps.TrainState(step=jnp.array(0, jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"],
                           opt_state=tx.init(variables["params"]),
                           rng=jax.random.key_data(key), aux={})
  train_step = jax.pmap(functools.partial(steps.classifier_train_step, model=model, tx=tx),
                        axis_name=parallel.AXIS)
  state_r = parallel.replicate(state)
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 3, 8).astype(np.int32)}
    state_r, _ = train_step(state_r, parallel.shard(batch))
  final = parallel.unreplicate(state_r)
  leaves = jax.tree_util.tree_leaves_with_path({"params": final.params, "bs": final.batch_stats})
  np.savez(out, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves},
           devices=jax.local_device_count())


if __name__ == "__main__":
  main(sys.argv[1])
