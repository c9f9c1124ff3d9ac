"""orbax checkpoints of a training stage: the latest and the best by validation score.

One CheckpointManager per stage directory keeps two steps: the latest (to resume)
and the one with the best validation score (for testing and for stage 2). Each
checkpoint holds the train state and a JSON `meta` (epoch, history, best score).

Saves may run in the background (`async_save`): the state is copied to host memory
first, and the next save, any restore and `close` wait for the write to finish.
A step that cannot be read back (a missing or truncated file, garbage JSON: a disk
error, a partial copy) is moved aside as `<step>.unreadable-<time>`, kept for
inspection, by `restore_latest`, which then falls back to the newest readable step
(docs/faults.md).
"""

import itertools
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from fcam_jax import errors

# Set-aside step folders: orbax only reads names of digits or ending in `_<digits>`.
UNREADABLE = ".unreadable-"
_barriers = itertools.count()


class CheckpointNotFoundError(FileNotFoundError):
  pass


class CheckpointMismatchError(errors.ConfigError):
  """A readable checkpoint of another model (another config in the same directory)."""


def _score(metrics: Dict) -> float:
  return metrics["score"]


def describe_error(e: BaseException) -> str:
  """`Type: the first line of the message`, at most 200 characters."""
  first = (str(e).strip().splitlines() or [""])[0]
  text = f"{type(e).__name__}: {first}" if first else type(e).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def _all_processes(ok: bool) -> bool:
  """`ok` on every process (each process reads the checkpoint itself)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _sync(name: str):
  ocp.multihost.sync_global_processes(f"fcam_jax:{name}:{next(_barriers)}")


def _step_dirs(directory: str) -> List[str]:
  if not os.path.isdir(directory):
    return []
  return sorted((n for n in os.listdir(directory)
                 if n.isdigit() and os.path.isdir(os.path.join(directory, n))), key=int)


class Checkpointer:
  """Saves/restores `(state, meta)`; keeps the latest and the best step."""

  def __init__(self, directory: str, mode: str = "max", read_only: bool = False,
               async_save: bool = False):
    self.directory = os.path.abspath(directory)
    self._async = async_save
    self._closed = False
    if not read_only:  # orbax reads every step's metrics when it opens: one must parse
      for name in _step_dirs(self.directory):
        error = _metrics_error(os.path.join(self.directory, name))
        if not _all_processes(error is None):
          self._set_aside(int(name), error or "metrics unreadable on another process")
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(get_metric_fn=_score,
                                  reverse=(mode == "min"), n=1),
    ])
    # best_fn/best_mode make best_step() return the best step (without them it is the
    # latest); the preservation policy decides what is kept. A save killed mid-write
    # leaves `<step>.orbax-checkpoint-tmp*`, removed when a writer opens the directory.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_score,
                                           best_mode=mode, create=not read_only,
                                           read_only=read_only,
                                           cleanup_tmp_directories=not read_only,
                                           enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: Any, meta: Dict, score: float):
    """Writes `step`; with `async_save`, in the background (it owns copies of both)."""
    # Host numpy, not device arrays: every process holds the same values, and orbax
    # refuses process-local jax.Arrays in a multi-process job. Copies: the caller's
    # buffers (donated to the next step, `meta` appended to) change during the write.
    state = jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(state))
    meta = json.loads(json.dumps(meta))
    self.wait()
    if step in self._mngr.all_steps():  # saved again with its validation score
      self._mngr.delete(step)
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  meta=ocp.args.JsonSave(meta)),
                    metrics={"score": float(score)}, force=True)
    if not self._async:
      self.wait()

  def wait(self):
    """Returns when the save in flight (if any) is on disk; raises its error."""
    self._mngr.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self):
    return sorted(self._mngr.all_steps())

  def best_step(self) -> Optional[int]:
    return self._mngr.best_step()

  def restore(self, step: int, target: Any) -> Tuple[Any, Dict]:
    """The state (structured like `target`, an abstract or concrete pytree) and meta."""
    self.wait()
    abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), x.dtype), target)  # restore as numpy
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    logging.info("restored %s step %d", self.directory, step)
    return out.state, out.meta

  def restore_latest(self, target: Any) -> Optional[Tuple[int, Any, Dict]]:
    """(step, state, meta) of the newest readable step, or None if there is none.

    Each step that fails to restore is named in one log line and moved aside
    (`<step>.unreadable-<time>`, never deleted); then the next newest is tried.
    """
    tried = []
    while self.latest_step() is not None:
      step, error = self.latest_step(), None
      try:
        state, meta = self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        error = describe_error(e)
      mismatch = self._mismatch(step, target, None if error else state)
      if mismatch:  # not damage: keep it, and say so
        raise CheckpointMismatchError(
            f"{self.directory} step {step} holds another model than this config's "
            f"({mismatch}): rerun with the config it was trained with, or use another workdir")
      if _all_processes(error is None):
        return step, state, meta
      tried.append(self._set_aside(step, error or "unreadable on another process"))
    if tried:
      logging.warning("%s: no readable checkpoint (tried steps %s): starting from scratch",
                      self.directory, ", ".join(tried))
    return None

  def _mismatch(self, step: int, target: Any, restored: Any) -> Optional[str]:
    """How `target`'s leaves (names, shapes) differ from those of checkpoint `step`
    (`restored`, else its metadata), or None (same, or the metadata is unreadable)."""
    want = _leaf_shapes(target)
    if restored is not None:
      got = _leaf_shapes(restored)
    else:
      try:
        got = _leaf_shapes(self._mngr.item_metadata(step)["state"].tree)
      except Exception:  # pylint: disable=broad-except
        return None
    for name in sorted(set(want) | set(got)):
      if name not in got:
        return f"{name} is not in the checkpoint"
      if name not in want:
        return f"the checkpoint has {name}, which this model has not"
      if tuple(got[name]) != tuple(want[name]):
        return f"{name}: shape {tuple(got[name])} in the checkpoint, {tuple(want[name])} here"
    return None

  def _set_aside(self, step: int, error: str) -> str:
    """Renames step folder `step` (process 0) and reopens; returns what was tried."""
    if hasattr(self, "_mngr"):
      self.wait()
    path = os.path.join(self.directory, str(step))
    # Named after the folder's time, so every process names it alike before the rename.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(os.path.getmtime(path)))
    new = next(n for n in (f"{path}{UNREADABLE}{stamp}{f'-{i}' if i else ''}"
                           for i in itertools.count()) if not os.path.exists(n))
    _sync(f"set_aside:{step}")
    if jax.process_index() == 0:
      os.rename(path, new)
    _sync(f"set_aside_done:{step}")
    if hasattr(self, "_mngr"):
      self._mngr.reload()
    logging.warning("%s: checkpoint step %d is unreadable (%s); moved to %s", self.directory,
                    step, error, os.path.basename(new))
    return f"{step} (now {os.path.basename(new)})"

  def restore_raw(self, step: int) -> Any:
    """The state as saved (nested dicts of arrays), without a target structure."""
    self.wait()
    return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state

  def restore_meta(self, step: int) -> Dict:
    self.wait()
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self):
    """Waits for the save in flight, then closes; a second call does nothing."""
    if self._closed:
      return
    self._closed = True
    self._mngr.wait_until_finished()
    self._mngr.close()


def _leaf_shapes(tree: Any) -> Dict[str, Tuple[int, ...]]:
  """{'a/b/0/c': shape} of a pytree's leaves (dicts, dataclasses, tuples alike)."""
  def name(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return {"/".join(name(e) for e in path): tuple(x.shape if hasattr(x, "shape") else np.shape(x))
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _metrics_error(step_dir: str) -> Optional[str]:
  """Why the step's metrics file (orbax reads it to list steps) does not parse, or None."""
  path = os.path.join(step_dir, "metrics", "metrics")
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      json.load(f)
  except (OSError, ValueError) as e:
    return f"{os.path.relpath(path, os.path.dirname(step_dir))}: {describe_error(e)}"
  return None


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
