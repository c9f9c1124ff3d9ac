"""Stage 1: the WSOL classifier, trained on image labels, selected by its CAMs on val.

The classifier (backbone + WGAP head, docs/design.md §2-3) trains on cross-entropy
with SGD, its last stages and head at `config.stage1.classifier_lr_mult` times the
learning rate (§7); its maps are the CAMs of the images' labels (§4).
"""

import functools
from typing import Dict

from absl import logging
import jax
import jax.numpy as jnp
import optax

from fcam_jax import evaluation
from fcam_jax import inference
from fcam_jax import loop
from fcam_jax import models
from fcam_jax import optim
from fcam_jax import steps
from fcam_jax import weights
from fcam_jax.data import pipeline
from fcam_jax.parallel import AXIS


def classifier_train_step(state: steps.TrainState, batch: Dict, *, model,
                          tx: optax.GradientTransformation, dtype=jnp.float32):
  """One SGD step of the classifier on cross-entropy."""
  x = models.imagenet_standardize(batch["image"], dtype)
  labels = batch["label"]

  def loss_fn(params):
    (logits, _), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        mutable=["batch_stats"], rngs={"dropout": steps.step_key(state)})
    return steps.cross_entropy(logits, labels), (logits, new_vars["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, grad_norm = steps.apply_gradients(state, grads, tx, batch_stats)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
             "grad_norm": grad_norm}
  return new_state, jax.lax.pmean(metrics, AXIS)


def classifier_maps(variables, batch: Dict, rng, *, model, cam_config):
  """Logits and the CAMs of the images' labels, at the (eval) image size."""
  return inference.forward(variables, batch["image"], batch["label"], rng, classifier=model,
                           cam_config=cam_config)


def stage(run: loop.Run) -> loop.Stage:
  """The classifier's initial state (ImageNet weights if configured), step and maps."""
  config, parallel = run.config, run.parallel
  dtype = inference.compute_dtype(config)
  backbone_cls = models.backbone_class(config.model.backbone)
  model = models.build_classifier(config.model, bn_axis_name=AXIS, dtype=dtype)
  size = config.data.crop_size
  key = jax.random.key(config.seed)
  variables = jax.jit(functools.partial(model.init, train=False))(
      key, jnp.zeros((1, size, size, 3), dtype))
  if config.model.pretrained:
    variables, report = weights.load_pretrained(config.model.pretrained, variables,
                                                config.model.backbone)
    logging.info("stage1: backbone weights from %s\n%s", config.model.pretrained, report)
  params = variables["params"]
  steps_per_epoch = pipeline.steps_per_epoch(len(run.splits["train"]), config.stage1.batch_size)
  mult = optim.group_multipliers(params, optim.classifier_group(backbone_cls),
                                 config.stage1.classifier_lr_mult)
  tx = optim.sgd(config.stage1, steps_per_epoch, mult)
  state = steps.create_train_state(params, variables.get("batch_stats", {}), tx,
                                   jax.random.fold_in(key, 1))
  train_step = parallel.step(functools.partial(classifier_train_step, model=model, tx=tx,
                                               dtype=dtype), specs=(False, True))
  maps = evaluation.MapFunction(
      parallel.per_example(functools.partial(classifier_maps, model=model,
                                             cam_config=config.cam),
                           specs=(False, True, "key")), ("cam",))
  return loop.Stage(
      name="stage1", config=config.stage1, state=state, train_step=train_step,
      variables=lambda s: {"classifier": {"params": s.params, "batch_stats": s.batch_stats}},
      val=maps, test=maps)
