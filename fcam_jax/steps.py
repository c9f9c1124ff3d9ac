"""Pure train and eval steps, written per device; `parallel` pmaps them over 'batch'.

Inside a pmapped step every device sees its shard of the global batch; gradients
and metrics are averaged over the named axis, and BatchNorm computes its batch
statistics over the same axis, so N devices compute what one device would on the
whole global batch.
"""

from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import optax

from fcam_jax import cams as cam_lib
from fcam_jax.models import normalize
from fcam_jax.parallel import AXIS


@flax.struct.dataclass
class TrainState:
  """Everything a stage checkpoints. `rng` is raw key data (uint32), folded per step."""
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray
  aux: Dict[str, jnp.ndarray]  # stage-specific scalars (stage 2: the ELB's t)


def _this_step(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def step_key(state: TrainState, *extra: int) -> jax.Array:
  """A PRNG key unique to (step, device, extra): nothing to carry between steps."""
  key = jax.random.fold_in(_this_step(state), jax.lax.axis_index(AXIS))
  for e in extra:
    key = jax.random.fold_in(key, e)
  return key


def image_keys(state: TrainState, indices: jnp.ndarray) -> jax.Array:
  """(B,) PRNG keys unique to (step, image index): the same whatever the device layout."""
  key = _this_step(state)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classifier_train_step(state: TrainState, batch: Dict, *, model, tx: optax.GradientTransformation,
                          dtype=jnp.float32):
  """Stage 1: one SGD step of the classifier on cross-entropy."""
  x = normalize(batch["image"], dtype)
  labels = batch["label"]

  def loss_fn(params):
    (logits, _), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        mutable=["batch_stats"], rngs={"dropout": step_key(state)})
    return cross_entropy(logits, labels), (logits, new_vars["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
             "grad_norm": optax.global_norm(grads)}
  metrics = jax.lax.pmean(metrics, AXIS)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


def cam_maps(model, variables, taps: Dict, images, labels, rng, cam_config):
  """The CAM of each image's label from a forward pass's taps, min-max normalized and
  upsampled to the input size (SPEC §4). `cam_config` is `config.cam`."""
  cams = cam_lib.compute_from_taps(cam_config.method, model, variables, taps, labels,
                                   images=images, tap=cam_config.tap or None, rng=rng,
                                   options=cam_config)
  return cam_lib.upsample(cam_lib.normalize(cams.astype(jnp.float32)), images.shape[1:3])


def classifier_maps(variables, batch: Dict, rng, *, model, cam_config, dtype=jnp.float32):
  """Logits and the CAMs of the images' labels, at the (eval) image size."""
  x = normalize(batch["image"], dtype)
  logits, taps = model.apply(variables, x, train=False)
  return logits, cam_maps(model, variables, taps, x, batch["label"], rng, cam_config)
