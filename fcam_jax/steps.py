"""Pure train and eval steps, written per device; `parallel` pmaps them over 'batch'.

Inside a pmapped step every device sees its shard of the global batch; gradients
and metrics are averaged over the named axis, and BatchNorm computes its batch
statistics over the same axis, so N devices compute what one device would on the
whole global batch.
"""

from typing import Any, Callable, Dict

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


def step_key(state: TrainState, *extra: int) -> jax.Array:
  """A PRNG key unique to (step, device, extra): nothing to carry between steps."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
  for e in extra:
    key = jax.random.fold_in(key, e)
  return key


def image_keys(state: TrainState, indices: jnp.ndarray) -> jax.Array:
  """(B,) PRNG keys unique to (step, image index): the same whatever the device layout."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
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


def classifier_maps(variables, batch: Dict, rng, *, model, cam_method: str, cam_tap: str,
                    cam_options, map_size: int, dtype=jnp.float32):
  """Logits and the normalized, upsampled CAM of each image's label (SPEC §4)."""
  x = normalize(batch["image"], dtype)
  logits, taps = model.apply(variables, x, train=False)
  cams = cam_lib.compute_from_taps(cam_method, model, variables, taps, batch["label"], images=x,
                                   tap=cam_tap, rng=rng, options=cam_options)
  maps = cam_lib.upsample(cam_lib.normalize(cams.astype(jnp.float32)), (map_size, map_size))
  return logits, maps


def pmap_train_step(fn: Callable, **kwargs):
  return jax.pmap(lambda s, b: fn(s, b, **kwargs), axis_name=AXIS, donate_argnums=(0,))


def pmap_eval(fn: Callable, **kwargs):
  return jax.pmap(lambda v, b, r: fn(v, b, r, **kwargs), axis_name=AXIS)
