"""Maps from trained weights: the one forward pass, and trained models read from a workdir.

`forward` is the only place where the classifier, its CAM and the F-CAM decoder are
run for maps: the stages' evaluation, `predict` and `fcam_jax.api` all call it.
`load_trained(workdir)` restores what `python -m fcam_jax.main` trained there.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from fcam_jax import cams
from fcam_jax import checkpoint as ckpt_lib
from fcam_jax import config_lib
from fcam_jax import models
from fcam_jax.models import decoder as decoder_lib

CHECKPOINTS = ("best", "last")
THRESHOLD_KEY = "best_tau_MaxBoxAcc"
DEFAULT_THRESHOLD = 0.5


class WorkdirError(ValueError):
  """A workdir, config or argument that cannot be used; the message names it."""


def compute_dtype(config) -> Any:
  return jnp.bfloat16 if config.half_precision else jnp.float32


def forward(variables: Dict, images: jnp.ndarray, labels: Optional[jnp.ndarray], rng, *,
            classifier, decoder=None, cam_config=None, with_cam: bool = True
            ) -> Dict[str, jnp.ndarray]:
  """Logits and maps of uint8 images (B, S, S, 3).

  `variables` holds `classifier` (and `decoder`) variables. Returns `logits` (B, K),
  `cam` (B, S, S): the CAM of class `labels` (None: of the top-1 class) by
  `cam_config.method`, min-max normalized (with `with_cam`); `fcam` (B, S, S):
  softmax(decoder)[..., 1], not normalized (with a decoder).
  """
  clf_vars = variables["classifier"]
  x = models.imagenet_standardize(images, classifier.backbone.dtype)
  logits, taps = classifier.apply(clf_vars, x, train=False)
  out = {"logits": logits}
  if with_cam:
    if labels is None:
      labels = jnp.argmax(logits, axis=-1)  # ties: the lower class, as the evaluator
    out["cam"] = cams.upsampled_maps(classifier, clf_vars, taps, x, labels, rng, cam_config)
  if decoder is not None:
    dec = decoder.apply(variables["decoder"], decoder_lib.skip_taps(taps, classifier.backbone),
                        x.shape[1:3], train=False)
    out["fcam"] = jax.nn.softmax(dec.astype(jnp.float32), axis=-1)[..., 1]
  return out


# ----------------------------------------------------------------------------- workdirs


def _update(node: ml_collections.ConfigDict, values: Dict, path: str, prefix: str = "config"):
  for key, value in values.items():
    name = f"{prefix}.{key}"
    if key not in node:
      logging.warning("%s: ignoring unknown key %s", path, name)
    elif isinstance(node[key], ml_collections.ConfigDict):
      if not isinstance(value, dict):
        raise WorkdirError(f"{path}: {name} must be a section, got {value!r}")
      _update(node[key], value, path, name)
    else:
      try:
        node[key] = tuple(value) if isinstance(node[key], tuple) else value
      except (TypeError, ValueError) as e:
        raise WorkdirError(f"{path}: bad value for {name}: {e}") from e


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """`<workdir>/config.json` (or results.json's `config`) over `config_lib.base_config()`."""
  if not os.path.isdir(workdir):
    raise WorkdirError(f"no workdir {workdir}")
  path = os.path.join(workdir, "config.json")
  key = None
  if not os.path.isfile(path):
    results = os.path.join(workdir, "results.json")
    if not os.path.isfile(results):
      raise WorkdirError(f"no config in workdir {workdir}: {path} not found "
                         "(is it a python -m fcam_jax.main workdir?)")
    path, key = results, "config"
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path}: unreadable config ({e})") from e
  if key is not None:
    values = values.get(key)
  if not isinstance(values, dict):
    raise WorkdirError(f"{path}: no config object")
  config = config_lib.base_config()
  _update(config, values, path)
  return config


def open_checkpoint(directory: str, which: str
                    ) -> Optional[Tuple[ckpt_lib.Checkpointer, int]]:
  """The checkpointer of `directory` and its best/last step, or None if it has none."""
  if not directory or not os.path.isdir(directory):
    return None
  ckpt = ckpt_lib.Checkpointer(directory, read_only=True)
  step = ckpt.best_step() if which == "best" else ckpt.latest_step()
  if step is None:
    step = ckpt.latest_step()
  if step is None:
    ckpt.close()
    return None
  return ckpt, step


def val_threshold(ckpt: ckpt_lib.Checkpointer, step: int, stage_dir: str
                  ) -> Tuple[Optional[float], str]:
  """The val `best_tau_MaxBoxAcc` of `step`: from the checkpoint's history, else results.json."""
  try:
    history = ckpt.restore_meta(step).get("history", [])
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("%s step %d: no readable meta (%s)", ckpt.directory, step, e)
    history = []
  results_path = os.path.join(stage_dir, "results.json")
  if os.path.isfile(results_path):
    try:
      with open(results_path) as f:
        history = history + [json.load(f).get("val_at_best") or {}]
    except (OSError, ValueError) as e:
      logging.warning("%s: unreadable (%s)", results_path, e)
  for h in history:
    if h.get("step") == step and h.get(THRESHOLD_KEY) is not None:
      return float(h[THRESHOLD_KEY]), f"val {THRESHOLD_KEY} of {ckpt.directory} step {step}"
  return None, ""


def restore_variables(ckpt: ckpt_lib.Checkpointer, step: int) -> Dict:
  state = ckpt.restore_raw(step)
  return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}


def classifier_directory(config, workdir: str) -> str:
  """Where stage 2 takes its frozen classifier from."""
  return os.path.abspath(config.stage2.classifier_checkpoint
                         or os.path.join(workdir, "stage1", "checkpoints"))


def load_classifier(config, workdir: str) -> Tuple[Dict, int]:
  """The stage-1 `best` classifier variables (`config.stage2.classifier_checkpoint` or
  `<workdir>/stage1`) and their step; if the best step is unreadable, the other kept
  (latest) one, said in the log."""
  directory = config.stage2.classifier_checkpoint or os.path.join(workdir, "stage1", "checkpoints")
  hint = ("run stage 1 first, or set config.stage2.classifier_checkpoint to a stage-1 "
          "checkpoints directory")
  try:
    ckpt, best = ckpt_lib.open_best(directory)
  except ckpt_lib.CheckpointNotFoundError as e:
    raise ckpt_lib.CheckpointNotFoundError(
        f"stage 2 needs a trained stage-1 classifier: {e} ({hint})") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ckpt_lib.CheckpointNotFoundError(
        f"stage 2 needs a trained stage-1 classifier: the checkpoints in {directory} cannot "
        f"be listed ({ckpt_lib.describe_error(e)}); {hint}") from e
  tried = []
  try:
    for step in [best] + [s for s in reversed(ckpt.all_steps()) if s != best]:
      try:
        variables = restore_variables(ckpt, step)
      except Exception as e:  # pylint: disable=broad-except
        tried.append(f"step {step} ({ckpt_lib.describe_error(e)})")
        logging.warning("stage2: classifier checkpoint %s step %d is unreadable (%s)",
                        directory, step, ckpt_lib.describe_error(e))
        continue
      if step != best:
        logging.warning("stage2: the best classifier (step %d) is unreadable: using step %d of "
                        "%s instead", best, step, directory)
      logging.info("stage2: frozen classifier from %s step %d", directory, step)
      return variables, step
  finally:
    ckpt.close()
  raise ckpt_lib.CheckpointNotFoundError(
      f"stage 2 needs a trained stage-1 classifier: no readable checkpoint in {directory} "
      f"(tried {'; '.join(tried)}); retrain stage 1, or set config.stage2.classifier_checkpoint "
      "to another stage-1 checkpoints directory")


@dataclasses.dataclass
class TrainedModel:
  """A workdir's classifier (and decoder), ready for `forward`."""
  config: ml_collections.ConfigDict
  variables: Dict[str, Any]       # {'classifier': ..., 'decoder': ...} on the device
  classifier: Any
  decoder: Any                    # None: stage 1 only
  checkpoint: Dict[str, Any]      # provenance: stage, which, directory, step, classifier
  threshold: float                # the val-best box threshold of the checkpoint
  threshold_source: str

  @property
  def eval_size(self) -> int:
    return int(self.config.data.eval_size)


def load_trained(workdir: str, checkpoint: str = "best") -> TrainedModel:
  """The classifier (+ decoder) of a `python -m fcam_jax.main` workdir.

  `checkpoint` picks the stage-2 decoder step (`best` by validation, or `last`); the
  classifier is the one stage 2 was trained on (stage-1 best, or
  `config.stage2.classifier_checkpoint`). Without a stage-2 checkpoint: the stage-1
  classifier of the `checkpoint` step, CAM only.
  """
  if checkpoint not in CHECKPOINTS:
    raise WorkdirError(f"checkpoint={checkpoint!r}: must be one of {', '.join(CHECKPOINTS)}")
  config = load_config(workdir)
  stage2_dir, stage1_dir = os.path.join(workdir, "stage2"), os.path.join(workdir, "stage1")
  found = open_checkpoint(os.path.join(stage2_dir, "checkpoints"), checkpoint)
  variables, info = {}, {"workdir": os.path.abspath(workdir), "which": checkpoint}
  if found is not None:
    ckpt, step = found
    try:
      variables["decoder"] = restore_variables(ckpt, step)
      tau, source = val_threshold(ckpt, step, stage2_dir)
    finally:
      ckpt.close()
    variables["classifier"], clf_step = load_classifier(config, workdir)
    info.update(stage="stage2", directory=ckpt.directory, step=step,
                classifier_directory=classifier_directory(config, workdir),
                classifier_step=clf_step)
  else:
    candidates = [os.path.join(stage1_dir, "checkpoints")]
    if config.stage2.classifier_checkpoint:
      candidates.append(config.stage2.classifier_checkpoint)
    found = next(filter(None, (open_checkpoint(d, checkpoint) for d in candidates)), None)
    if found is None:
      raise ckpt_lib.CheckpointNotFoundError(
          f"no checkpoint in {os.path.join(stage2_dir, 'checkpoints')} nor in "
          f"{' or '.join(candidates)}: train with python -m fcam_jax.main first")
    ckpt, step = found
    try:
      variables["classifier"] = restore_variables(ckpt, step)
      tau, source = val_threshold(ckpt, step, os.path.dirname(ckpt.directory))
    finally:
      ckpt.close()
    info.update(stage="stage1", directory=ckpt.directory, step=step)
    logging.warning("no stage-2 checkpoint in %s: the baseline CAM only (stage 1 %s step %d)",
                    stage2_dir, ckpt.directory, step)
  if tau is None:
    tau, source = DEFAULT_THRESHOLD, "default (no validation threshold found)"
    logging.warning("no val %s for %s step %d: box threshold %.2f", THRESHOLD_KEY,
                    info["directory"], info["step"], tau)
  dtype = compute_dtype(config)
  classifier = models.build_classifier(config.model, dtype=dtype)
  decoder = None
  if "decoder" in variables:
    decoder = decoder_lib.decoder_for(models.backbone_class(config.model.backbone),
                                      config_lib.decoder_channels(config), dtype=dtype)
  return TrainedModel(config=config, variables=jax.device_put(variables), classifier=classifier,
                      decoder=decoder, checkpoint=info, threshold=tau, threshold_source=source)
