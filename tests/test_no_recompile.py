"""Steady state compiles nothing: each jitted train/eval step compiles once per run.

A tiny run of both stages (3 steps per epoch; stage 2 over two epochs, so the ELB's t
changes between them; val before training and after every epoch, then test, each with
a padded last batch) with every function `DataParallel.step` / `.per_example` compiles
wrapped: a listener on jax's backend-compile event counts the compilations that
happen inside each call. (The compiled names alone cannot tell the steps apart:
pmap compiles every function as 'jit(_fun)', the jit backend as 'jit(body)'.)
"""

import functools

import jax
import pytest

from fcam_jax import parallel, train
from tests.conftest import tiny_config

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class _Recorder:
  """Compile events, and per wrapped step: its calls and the compiles inside them."""

  def __init__(self):
    self.events = []  # (fun_name, seconds)
    self.steps = []   # [name, calls, [seconds of each compile inside a call], [event index
                      #  at each call's start]]

  def listener(self, event, duration, **kwargs):
    if event == COMPILE_EVENT:
      self.events.append((str(kwargs.get("fun_name", "")), duration))

  def wrap(self, make):
    """Wraps DataParallel.step / .per_example: the compiled fn is counted under fn's name."""
    def compile_fn(par, fn, *args, **kwargs):
      compiled = make(par, fn, *args, **kwargs)
      name = getattr(fn, "func", fn).__name__
      if isinstance(fn, functools.partial) and "with_cam" in fn.keywords:
        name += f"(with_cam={fn.keywords['with_cam']})"
      record = [name, 0, [], []]
      self.steps.append(record)

      def call(*a):
        before = len(self.events)
        record[3].append(before)
        out = compiled(*a)
        record[1] += 1
        record[2] += [s for _, s in self.events[before:]]
        return out
      return call
    return compile_fn


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
  rec = _Recorder()
  config = tiny_config(data_dir, stages="both",
                       **{"stage1.epochs": 1, "stage2.epochs": 2, "eval.num_figures": 0})
  patch = pytest.MonkeyPatch()
  patch.setattr(parallel.DataParallel, "step", rec.wrap(parallel.DataParallel.step))
  patch.setattr(parallel.DataParallel, "per_example",
                rec.wrap(parallel.DataParallel.per_example))
  jax.monitoring.register_event_duration_secs_listener(rec.listener)
  try:
    train.train_and_evaluate(config, str(tmp_path_factory.mktemp("nocompile")))
  finally:
    jax.monitoring.unregister_event_duration_listener(rec.listener)
    patch.undo()
  return config, rec


def test_run_has_several_steps_and_padded_eval_batches(run):
  config, rec = run
  s = config.dataset.synthetic
  spe1, spe2 = s.train_size // config.stage1.batch_size, s.train_size // config.stage2.batch_size
  assert spe1 >= 3 and spe2 >= 3
  # The last val and test batches are padded, and there are full ones before them.
  for size in (s.val_size, s.test_size):
    assert size % config.eval.batch_size and size > config.eval.batch_size
  calls = {r[0]: r[1] for r in rec.steps}
  assert calls["classifier_train_step"] == spe1 * config.stage1.epochs
  assert calls["fcam_train_step"] == spe2 * config.stage2.epochs
  # val before training and after each epoch (2 batches each), test (2 batches).
  assert calls["classifier_maps"] == 2 * (config.stage1.epochs + 1) + 2
  assert calls["fcam_maps(with_cam=False)"] == 2 * (config.stage2.epochs + 1)
  assert calls["fcam_maps(with_cam=True)"] == 2


def test_each_step_function_compiles_exactly_once(run):
  _, rec = run
  names = [r[0] for r in rec.steps]
  assert sorted(names) == sorted(["classifier_train_step", "classifier_maps", "fcam_train_step",
                                  "fcam_maps(with_cam=False)", "fcam_maps(with_cam=True)"])
  compiles = {r[0]: len(r[2]) for r in rec.steps}
  assert compiles == {name: 1 for name in names}, compiles
  print("\ncompile seconds per step function: " + ", ".join(
      f"{r[0]} {sum(r[2]):.1f}" for r in rec.steps))


def test_nothing_compiles_once_training_is_warm(run):
  """Stage 2's second epoch repeats what its first did (steps, metrics logging; the val
  and the ELB update come between): from its first step to the start of its last, no
  compilation of anything (the last call is covered by the per-step count). Likewise
  stage 1 from its second step."""
  config, rec = run
  starts = {r[0]: r[3] for r in rec.steps}
  spe2 = config.dataset.synthetic.train_size // config.stage2.batch_size
  stage2 = starts["fcam_train_step"]
  assert len(stage2) == 2 * spe2 and stage2[spe2] < len(rec.events)
  assert not rec.events[stage2[spe2]:stage2[-1]], rec.events[stage2[spe2]:stage2[-1]]
  stage1 = starts["classifier_train_step"]
  assert not rec.events[stage1[1]:stage1[-1]], rec.events[stage1[1]:stage1[-1]]
