"""SGD as the original trains: Nesterov momentum, weight decay, step schedule, 10x group."""

from typing import Any, Callable, Sequence

import jax
import optax


def step_schedule(lr: float, decay_epochs: int, factor: float, steps_per_epoch: int):
  """lr * factor ** (epoch // decay_epochs), epochs counted in steps (torch StepLR)."""
  if not decay_epochs:
    return optax.constant_schedule(lr)
  every = decay_epochs * steps_per_epoch
  return lambda step: lr * factor ** (step // every)


def group_multipliers(params: Any, is_fast: Callable[[tuple], bool], mult: float) -> Any:
  """A pytree like `params`: `mult` where `is_fast(path)`, else 1."""
  def leaf(path, _):
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    return mult if is_fast(names) else 1.0
  return jax.tree_util.tree_map_with_path(leaf, params)


def sgd(stage_config, steps_per_epoch: int, lr_multipliers: Any = None
        ) -> optax.GradientTransformation:
  """torch.optim.SGD(nesterov, momentum, weight_decay) with per-parameter lr multipliers.

  torch adds weight decay to the gradient before momentum and scales the result by
  the group's lr, so a group's 10x lr is a 10x scale of the final update.
  """
  c = stage_config
  schedule = step_schedule(c.lr, c.lr_decay_epochs, c.lr_decay_factor, steps_per_epoch)
  parts = [optax.add_decayed_weights(c.weight_decay),
           optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov)]
  if lr_multipliers is not None:
    parts.append(_scale_by_tree(lr_multipliers))
  return optax.chain(*parts)


def _scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def classifier_group(backbone_cls) -> Callable[[Sequence[str]], bool]:
  """Whether a parameter path belongs to the 10x group: the last stages and the head."""
  fast = set(backbone_cls.CLASSIFIER_GROUP)

  def is_fast(path: Sequence[str]) -> bool:
    return path[0] == "head" or (path[0] == "backbone" and len(path) > 1 and path[1] in fast)
  return is_fast
