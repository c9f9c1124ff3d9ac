"""Stage 2: train the U-Net decoder on the frozen stage-1 classifier (SPEC §1, §6, §7).

Each step runs the frozen encoder once (BatchNorm in inference mode): its taps feed
the decoder, and the CAM of each image's label, computed from the same taps (the
gradient methods need only the VJP of the layers after the tap), gives the seeds.
Only the decoder is trained. The F-CAM is softmax(decoder)[..., 1], not min-max
normalized; validation selects the decoder by the F-CAM's localization, and the
test reports the baseline CAM and the F-CAM side by side.
"""

import functools
import os
from typing import Dict

from absl import logging
import jax
import jax.numpy as jnp
import optax

from fcam_jax import checkpoint as ckpt_lib
from fcam_jax import config_lib
from fcam_jax import losses
from fcam_jax import models
from fcam_jax import optim
from fcam_jax import parallel
from fcam_jax import steps
from fcam_jax.data import pipeline
from fcam_jax.models import decoder as decoder_lib
from fcam_jax.models import normalize
from fcam_jax.parallel import AXIS

# Keys of results.json compared side by side (baseline CAM vs F-CAM).
COMPARED = ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_loc", "top5_loc", "top1_cls")


def load_classifier(config, workdir: str):
  """The stage-1 `best` classifier variables, from config or `<workdir>/stage1`."""
  directory = config.stage2.classifier_checkpoint or os.path.join(workdir, "stage1", "checkpoints")
  try:
    ckpt, step = ckpt_lib.open_best(directory)
  except ckpt_lib.CheckpointNotFoundError as e:
    raise ckpt_lib.CheckpointNotFoundError(
        f"stage 2 needs a trained stage-1 classifier: {e} (run stage 1 first, or set "
        "config.stage2.classifier_checkpoint to a stage-1 checkpoints directory)") from e
  state = ckpt.restore_raw(step)
  ckpt.close()
  logging.info("stage2: frozen classifier from %s step %d", directory, step)
  return {"params": state["params"], "batch_stats": state["batch_stats"]}, step


def _decoder_taps(taps, backbone_cls):
  return [jax.lax.stop_gradient(taps[name]) for name in backbone_cls.DECODER_TAPS]


def fcam_train_step(state: steps.TrainState, batch: Dict, clf_vars, *, classifier, decoder,
                    tx: optax.GradientTransformation, config, dtype=jnp.float32):
  """One SGD step of the decoder on seeds + CRF + size (SPEC §6)."""
  backbone_cls = type(classifier.backbone)
  x = normalize(batch["image"], dtype)
  size = x.shape[1:3]
  _, taps = classifier.apply(clf_vars, x, train=False)
  cam = steps.cam_maps(classifier, clf_vars, taps, x, batch["label"], steps.step_key(state, 1),
                       config.cam)
  s = config.fcam.seeds
  seeds = losses.sample_seeds(jax.lax.stop_gradient(cam), steps.image_keys(state, batch["index"]),
                              n_minus=s.n_minus, sl_max=s.sl_max, sl_min=s.sl_min,
                              erosion=s.erosion, dilation=s.dilation)
  dtaps = _decoder_taps(taps, backbone_cls)

  def loss_fn(params):
    logits, new_vars = decoder.apply({"params": params, "batch_stats": state.batch_stats}, dtaps,
                                     size, train=True, mutable=["batch_stats"])
    loss, terms = losses.total_loss(logits.astype(jnp.float32), seeds, batch["image"],
                                    state.aux["elb_t"], config.fcam, axis_name=AXIS)
    return loss, (terms, new_vars["batch_stats"])

  (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **terms, "grad_norm": optax.global_norm(grads),
             "elb_t": state.aux["elb_t"],
             "seeds_fg": jnp.mean(jnp.sum(seeds == losses.FOREGROUND, (1, 2))),
             "seeds_bg": jnp.mean(jnp.sum(seeds == losses.BACKGROUND, (1, 2)))}
  metrics = jax.lax.pmean(metrics, AXIS)
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state), metrics


def fcam_maps(variables, batch: Dict, rng, *, classifier, decoder, config, with_cam: bool):
  """(logits, [baseline CAM maps,] F-CAM maps) at the eval image size."""
  backbone_cls = type(classifier.backbone)
  clf_vars, dec_vars = variables["classifier"], variables["decoder"]
  x = normalize(batch["image"], decoder.dtype)
  logits, taps = classifier.apply(clf_vars, x, train=False)
  out = decoder.apply(dec_vars, _decoder_taps(taps, backbone_cls), x.shape[1:3], train=False)
  fcam = jax.nn.softmax(out.astype(jnp.float32), axis=-1)[..., 1]
  if not with_cam:
    return logits, fcam
  return logits, steps.cam_maps(classifier, clf_vars, taps, x, batch["label"], rng, config.cam), fcam


def train_decoder(config, workdir: str, splits, writer, par: parallel.DataParallel) -> Dict:
  """Stage 2 from the stage-1 best checkpoint; returns the stage's results."""
  from fcam_jax import train  # pylint: disable=g-import-not-at-top
  dtype = train.compute_dtype(config)
  backbone_cls = models.backbone_class(config.model.backbone)
  classifier = models.build_classifier(config.model, dtype=dtype)
  decoder = decoder_lib.decoder_for(backbone_cls, config_lib.decoder_channels(config),
                                    bn_axis_name=AXIS, dtype=dtype)
  clf_vars, clf_step = load_classifier(config, workdir)
  clf_vars_r = par.replicate(clf_vars)

  size = config.data.crop_size
  key = jax.random.key(config.seed + 2)
  x0 = jnp.zeros((1, size, size, 3), dtype)
  taps0 = jax.eval_shape(lambda: classifier.apply(clf_vars, x0)[1])
  dtaps0 = [jnp.zeros(taps0[n].shape, taps0[n].dtype) for n in backbone_cls.DECODER_TAPS]
  dec_vars = jax.jit(functools.partial(decoder.init, train=False), static_argnums=2)(
      key, dtaps0, (size, size))
  spe = pipeline.steps_per_epoch(len(splits["train"]), config.stage2.batch_size)
  tx = optim.sgd(config.stage2, spe)
  state = steps.TrainState(
      step=jnp.array(0, jnp.int32), params=dec_vars["params"],
      batch_stats=dec_vars.get("batch_stats", {}), opt_state=tx.init(dec_vars["params"]),
      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
      aux={"elb_t": jnp.array(config.fcam.size.t_init, jnp.float32)})

  p_step = par.step(functools.partial(fcam_train_step, classifier=classifier, decoder=decoder,
                                      tx=tx, config=config, dtype=dtype),
                     specs=(False, True, False))
  p_maps = {with_cam: par.maps(functools.partial(fcam_maps, classifier=classifier, decoder=decoder,
                                                 config=config, with_cam=with_cam),
                               specs=(False, True, "key"))
            for with_cam in (False, True)}

  def end_of_epoch(state_r):
    t = losses.next_t(state_r.aux["elb_t"], config.fcam.size.t_mult, config.fcam.size.t_max)
    return state_r.replace(aux={**state_r.aux, "elb_t": t})

  return train.run_stage(
      name="stage2", config=config, workdir=workdir, splits=splits, writer=writer, state=state,
      train_step=lambda s, b: p_step(s, b, clf_vars_r),
      variables_of=lambda s: {"classifier": clf_vars_r,
                              "decoder": {"params": s.params, "batch_stats": s.batch_stats}},
      map_fn=p_maps[False], map_names=("fcam",),
      test_map_fn=p_maps[True], test_map_names=("cam", "fcam"), end_of_epoch=end_of_epoch,
      summarize=functools.partial(_summarize, classifier_step=clf_step),
      stage_config=config.stage2, par=par)


def _summarize(out: Dict, classifier_step: int) -> Dict:
  """The baseline CAM and F-CAM test metrics side by side."""
  test = out["test"]
  return {"classifier_step": classifier_step,
          "comparison": {k: {"cam": test["cam"].get(k), "fcam": test["fcam"].get(k)}
                         for k in COMPARED if k in test["fcam"]}}
