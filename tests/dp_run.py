"""Runs a few stage-1 train steps on all devices and saves the parameters.

Used by the data-parallel tests under different device counts and backends:
  python tests/dp_run.py OUT.npz [pmap|jit] [PROCESS_ID NUM_PROCESSES PORT]
With a process id, it joins a `jax.distributed` job on localhost (CPU collectives
over gloo); each process feeds its slice of every global batch, as the pipeline does.
"""

import functools
import sys

import jax


def main(out, kind="pmap", process_id=None, num_processes=None, port=None):
  if process_id is not None:
    from fcam_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(f"localhost:{port}", int(num_processes), int(process_id))
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fcam_jax import models, optim, parallel, stage1, steps  # pylint: disable=g-import-not-at-top

  par = parallel.DataParallel(kind)
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
  train_step = par.step(functools.partial(stage1.classifier_train_step, model=model, tx=tx),
                        specs=(False, True))
  state_r = par.replicate(state)
  rng = np.random.default_rng(0)
  n, p = jax.process_count(), jax.process_index()
  for _ in range(3):
    batch = {"image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 3, 8).astype(np.int32)}
    local = jax.tree.map(lambda x: x[p * 8 // n:(p + 1) * 8 // n], batch)
    state_r, metrics = train_step(state_r, par.shard(local))
  final = par.unreplicate(state_r)
  leaves = jax.tree_util.tree_leaves_with_path({"params": final.params, "bs": final.batch_stats})
  if p == 0:
    np.savez(out, **{jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves},
             devices=jax.device_count(), processes=n,
             loss=np.asarray(par.first(metrics)["loss"]))


if __name__ == "__main__":
  main(*sys.argv[1:])
