"""Stage 2, F-CAM: the U-Net decoder trained on the frozen stage-1 classifier.

Each step runs the frozen encoder once (BatchNorm in inference mode): its taps feed
the decoder, and the CAM of each image's label, computed from the same taps (the
gradient methods need only the VJP of the layers after the tap), gives the seeds.
Only the decoder is trained, on seeds + CRF + size (docs/design.md §6). The F-CAM is
softmax(decoder)[..., 1], not min-max normalized; validation selects the decoder by
the F-CAM's localization, and the test reports the baseline CAM and the F-CAM side
by side.
"""

import functools
from typing import Dict

from absl import logging
import jax
import jax.numpy as jnp
import optax

from fcam_jax import cams
from fcam_jax import config_lib
from fcam_jax import evaluation
from fcam_jax import inference
from fcam_jax import losses
from fcam_jax import loop
from fcam_jax import metrics
from fcam_jax import models
from fcam_jax import optim
from fcam_jax import steps
from fcam_jax.data import pipeline
from fcam_jax.models import decoder as decoder_lib
from fcam_jax.parallel import AXIS


def fcam_train_step(state: steps.TrainState, batch: Dict, clf_vars, *, classifier, decoder,
                    tx: optax.GradientTransformation, config, dtype=jnp.float32):
  """One SGD step of the decoder on seeds + CRF + size."""
  x = models.imagenet_standardize(batch["image"], dtype)
  size = x.shape[1:3]
  _, taps = classifier.apply(clf_vars, x, train=False)
  cam = cams.upsampled_maps(classifier, clf_vars, taps, x, batch["label"],
                            steps.step_key(state, 1), config.cam)
  s = config.fcam.seeds
  seeds = losses.sample_seeds(jax.lax.stop_gradient(cam), steps.image_keys(state, batch["index"]),
                              n_minus=s.n_minus, sl_max=s.sl_max, sl_min=s.sl_min,
                              erosion=s.erosion, dilation=s.dilation)
  skips = decoder_lib.skip_taps(taps, classifier.backbone)

  def loss_fn(params):
    logits, new_vars = decoder.apply({"params": params, "batch_stats": state.batch_stats}, skips,
                                     size, train=True, mutable=["batch_stats"])
    loss, terms = losses.total_loss(logits.astype(jnp.float32), seeds, batch["image"],
                                    state.aux["elb_t"], config.fcam, axis_name=AXIS)
    return loss, (terms, new_vars["batch_stats"])

  (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, grad_norm = steps.apply_gradients(state, grads, tx, batch_stats)
  metrics_ = {"loss": loss, **terms, "grad_norm": grad_norm, "elb_t": state.aux["elb_t"],
              "seeds_fg": jnp.mean(jnp.sum(seeds == losses.FOREGROUND, (1, 2))),
              "seeds_bg": jnp.mean(jnp.sum(seeds == losses.BACKGROUND, (1, 2)))}
  return new_state, jax.lax.pmean(metrics_, AXIS)


def fcam_maps(variables, batch: Dict, rng, *, classifier, decoder, config, with_cam: bool):
  """Logits, [the baseline CAMs of the labels,] the F-CAMs, at the eval image size."""
  return inference.forward(variables, batch["image"], batch["label"], rng,
                           classifier=classifier, decoder=decoder, cam_config=config.cam,
                           with_cam=with_cam)


def _summarize(out: Dict, classifier_step: int, sizes: Dict) -> Dict:
  """The baseline CAM and F-CAM test metrics side by side, and the sizes trained with."""
  test = out["test"]
  return {"classifier_step": classifier_step, "fcam_sizes": sizes,
          "comparison": {k: {"cam": test["cam"].get(k), "fcam": test["fcam"].get(k)}
                         for k in metrics.REPORTED if k in test["fcam"]}}


def stage(run: loop.Run) -> loop.Stage:
  """The decoder's initial state on stage 1's best classifier, its step and maps."""
  sizes = config_lib.stage2_sizes(run.config)
  logging.info("stage2: sizes for %dx%d crops (%s): %s", run.config.data.crop_size,
               run.config.data.crop_size,
               f"scaled from {run.config.fcam.reference_size}" if run.config.fcam.scale_with_image
               else "as given", ", ".join(f"{k}={v:.4g}" for k, v in sizes.items()))
  config, parallel = config_lib.with_stage2_sizes(run.config), run.parallel
  dtype = inference.compute_dtype(config)
  backbone_cls = models.backbone_class(config.model.backbone)
  classifier = models.build_classifier(config.model, dtype=dtype)
  decoder = decoder_lib.decoder_for(backbone_cls, config_lib.decoder_channels(config),
                                    bn_axis_name=AXIS, dtype=dtype)
  clf_vars, clf_step = inference.load_classifier(config, run.workdir)
  clf_replicated = parallel.replicate(clf_vars)

  size = config.data.crop_size
  key = jax.random.key(config.seed + 2)
  x0 = jnp.zeros((1, size, size, 3), dtype)
  taps0 = jax.eval_shape(lambda: classifier.apply(clf_vars, x0)[1])
  skips0 = [jnp.zeros(taps0[n].shape, taps0[n].dtype) for n in backbone_cls.DECODER_TAPS]
  dec_vars = jax.jit(functools.partial(decoder.init, train=False), static_argnums=2)(
      key, skips0, (size, size))
  steps_per_epoch = pipeline.steps_per_epoch(len(run.splits["train"]), config.stage2.batch_size)
  tx = optim.sgd(config.stage2, steps_per_epoch)
  state = steps.create_train_state(
      dec_vars["params"], dec_vars.get("batch_stats", {}), tx, jax.random.fold_in(key, 1),
      aux={"elb_t": jnp.array(config.fcam.size.t_init, jnp.float32)})

  train_step = parallel.step(functools.partial(fcam_train_step, classifier=classifier,
                                               decoder=decoder, tx=tx, config=config,
                                               dtype=dtype), specs=(False, True, False))
  maps = {with_cam: parallel.per_example(
      functools.partial(fcam_maps, classifier=classifier, decoder=decoder, config=config,
                        with_cam=with_cam), specs=(False, True, "key"))
          for with_cam in (False, True)}

  def end_of_epoch(replicated_state):
    t = losses.next_t(replicated_state.aux["elb_t"], config.fcam.size.t_mult,
                      config.fcam.size.t_max)
    return replicated_state.replace(aux={**replicated_state.aux, "elb_t": t})

  return loop.Stage(
      name="stage2", config=config.stage2, state=state,
      train_step=lambda s, b: train_step(s, b, clf_replicated),
      variables=lambda s: {"classifier": clf_replicated,
                           "decoder": {"params": s.params, "batch_stats": s.batch_stats}},
      val=evaluation.MapFunction(maps[False], ("fcam",)),
      test=evaluation.MapFunction(maps[True], ("cam", "fcam")),
      end_of_epoch=end_of_epoch,
      summarize=functools.partial(_summarize, classifier_step=clf_step, sizes=sizes))
