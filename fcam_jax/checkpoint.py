"""orbax checkpoints of a training stage: the latest and the best by validation score.

One CheckpointManager per stage directory keeps two steps: the latest (to resume)
and the one with the best validation score (for testing and for stage 2). Each
checkpoint holds the train state and a JSON `meta` (epoch, history, best score).
"""

import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class CheckpointNotFoundError(FileNotFoundError):
  pass


def _is_typed_key(x):
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _score(metrics: Dict) -> float:
  return metrics["score"]


class Checkpointer:
  """Saves/restores `(state, meta)`; keeps the latest and the best step."""

  def __init__(self, directory: str, mode: str = "max", read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(get_metric_fn=_score,
                                  reverse=(mode == "min"), n=1),
    ])
    # best_fn/best_mode make best_step() return the best step (without them it is the
    # latest); the preservation policy decides what is kept.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_score,
                                           best_mode=mode, create=not read_only,
                                           read_only=read_only,
                                           enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "meta"))

  def save(self, step: int, state: Any, meta: Dict, score: float):
    # Host numpy, not device arrays: every process holds the same values, and orbax
    # refuses process-local jax.Arrays in a multi-process job.
    state = jax.tree.map(np.asarray, jax.device_get(state))
    if step in self._mngr.all_steps():  # saved again with its validation score
      self._mngr.delete(step)
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)),
                    metrics={"score": float(score)}, force=True)
    self._mngr.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self):
    return sorted(self._mngr.all_steps())

  def best_step(self) -> Optional[int]:
    return self._mngr.best_step()

  def restore(self, step: int, target: Any) -> Tuple[Any, Dict]:
    """The state (structured like `target`, an abstract or concrete pytree) and meta."""
    abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), target)  # restore as numpy
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    logging.info("restored %s step %d", self.directory, step)
    return out.state, out.meta

  def restore_raw(self, step: int) -> Any:
    """The state as saved (nested dicts of arrays), without a target structure."""
    return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state

  def restore_meta(self, step: int) -> Dict:
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def open_best(directory: str, mode: str = "max") -> Tuple[Checkpointer, int]:
  """The checkpointer of a finished stage and its best step, or a clear error."""
  if not os.path.isdir(directory):
    raise CheckpointNotFoundError(f"no checkpoint directory {directory}")
  ckpt = Checkpointer(directory, mode=mode, read_only=True)
  step = ckpt.best_step()
  if step is None:
    step = ckpt.latest_step()
  if step is None:
    raise CheckpointNotFoundError(f"no checkpoint in {directory}")
  return ckpt, step
