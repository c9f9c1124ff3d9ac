"""Evaluates a trained workdir's best checkpoints of both stages on all devices.

Used by tests/test_parallel.py under different device counts:
  python tests/eval_devices.py WORKDIR OUT.json [pmap|jit]
Builds the stages' map functions as training does (stage1.stage, stage2.stage), scores
val and test with `evaluation.evaluate` (the CAM; the CAM and the F-CAM), and writes
the metrics and curves, the maps' hashes and the maps themselves (OUT.npz).
"""

import hashlib
import json
import os
import sys

import jax
import numpy as np


def main(workdir, out, kind="pmap"):
  from fcam_jax import checkpoint, evaluation, inference, loop, parallel, stage1, stage2  # pylint: disable=g-import-not-at-top
  from fcam_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = inference.load_config(workdir)
  config.parallel = kind
  par = parallel.DataParallel(kind, parallel.compiler_options(config.cpu_ynnpack))
  splits = sources.load_splits(config)
  run = loop.Run(config=config, workdir=workdir, splits=splits, writer=None, parallel=par)
  rng = jax.random.key(config.seed + 1)
  results, maps = {}, {}
  for build in (stage1.stage, stage2.stage):
    stage = build(run)
    with checkpoint.Checkpointer(os.path.join(workdir, stage.name, "checkpoints"),
                                 read_only=True) as ckpt:
      state, _ = ckpt.restore(ckpt.best_step(), stage.state)
    variables = stage.variables(par.replicate(state))
    for split, fn, interval in (("val", stage.val, config.eval.val_interval),
                                ("test", stage.test, config.eval.test_interval)):
      seen = []
      metrics = evaluation.evaluate(
          fn, variables, splits[split], config, interval, rng, parallel=par,
          observe=lambda batch, scored, seen=seen: seen.append((batch["index"], scored)))
      for name in fn.names:
        key = f"{stage.name}/{split}/{name}"
        results[key] = metrics[name]
        index = np.concatenate([i for i, _ in seen])
        maps[key] = np.concatenate([m[name] for _, m in seen])[np.argsort(index)]
  np.savez(out[:-len(".json")] + ".npz", **maps)
  with open(out, "w") as f:
    json.dump({"devices": jax.device_count(), "results": results,
               "map_sha256": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in maps.items()}},
              f, default=lambda x: np.asarray(x).tolist())


if __name__ == "__main__":
  main(*sys.argv[1:])
