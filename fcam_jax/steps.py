"""What both stages' train steps share: the state, per-step keys and the SGD update.

The steps are written per device; `parallel.DataParallel` runs them on every device
over the named axis `parallel.AXIS`. Gradients and metrics are averaged over it and
BatchNorm computes its batch statistics over it, so N devices compute what one
device would on the whole global batch.
"""

from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

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


def create_train_state(params, batch_stats, tx: optax.GradientTransformation, key: jax.Array,
                       aux=None) -> TrainState:
  """Step 0 of a stage: `key` seeds the per-step keys."""
  return TrainState(step=jnp.array(0, jnp.int32), params=params, batch_stats=batch_stats or {},
                    opt_state=tx.init(params), rng=jax.random.key_data(key), aux=aux or {})


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


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation,
                    batch_stats) -> Tuple[TrainState, jnp.ndarray]:
  """The update of a step: (the next step's state, the averaged gradients' global norm).

  `grads` are this device's, averaged here over the devices; `batch_stats` are the new
  BatchNorm statistics (BatchNorm synchronises them over the axis itself).
  """
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, optax.global_norm(grads)
