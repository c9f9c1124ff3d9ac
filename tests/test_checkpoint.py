"""Checkpointer: keeps the latest and the best step, says which is which, saves in the
background, and sets aside a step it cannot read (docs/faults.md)."""

import glob
import logging
import os

import numpy as np
import pytest

from fcam_jax import checkpoint


@pytest.mark.parametrize("mode,best", [("max", 1), ("min", 0)])
def test_latest_and_best_are_kept_and_told_apart(tmp_path, mode, best):
  ckpt = checkpoint.Checkpointer(str(tmp_path), mode=mode)
  scores = {0: 1.0, 1: 5.0, 2: 3.0, 3: 2.0}
  for step, score in scores.items():
    ckpt.save(step, {"w": np.full(3, step, np.float32)}, {"epoch": step}, score)
  assert ckpt.latest_step() == 3 and ckpt.best_step() == best
  state, meta = ckpt.restore(best, {"w": np.zeros(3, np.float32)})
  np.testing.assert_array_equal(state["w"], np.full(3, best))
  assert meta == {"epoch": best}
  ckpt.close()
  reopened, step = checkpoint.open_best(str(tmp_path), mode)
  assert step == best and sorted(reopened._mngr.all_steps()) == sorted({best, 3})


def test_open_best_names_the_missing_directory(tmp_path):
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="nothing_here"):
    checkpoint.open_best(str(tmp_path / "nothing_here"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="no checkpoint in"):
    checkpoint.open_best(str(tmp_path / "empty"))


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# The damage a disk error or a partial copy between machines leaves in a step folder.
CORRUPTIONS = {
    "missing_file": lambda d: os.remove(_largest_array_file(d)),
    "truncated_file": lambda d: _truncate(_largest_array_file(d)),
    "garbage_meta": lambda d: open(os.path.join(d, "meta", "metadata"), "w").write("{not json"),
    "garbage_metrics": lambda d: open(os.path.join(d, "metrics", "metrics"), "w").write("\0\0"),
}


def corrupt(step_dir, how):
  CORRUPTIONS[how](step_dir)


def _two_steps(directory, **kwargs):
  """Step 0 (best, score 5) and step 1 (latest, score 1), 1000 floats each."""
  ckpt = checkpoint.Checkpointer(directory, **kwargs)
  for step, score in ((0, 5.0), (1, 1.0)):
    ckpt.save(step, {"w": np.arange(1000, dtype=np.float32) + step, "b": np.int32(step)},
              {"history": [step]}, score)
  ckpt.close()
  return {"w": np.zeros(1000, np.float32), "b": np.int32(0)}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_an_unreadable_latest_step_is_set_aside_and_the_previous_one_restored(
    tmp_path, how, caplog):
  target = _two_steps(str(tmp_path))
  corrupt(str(tmp_path / "1"), how)
  caplog.set_level(logging.WARNING, logger="absl")
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  step, state, meta = ckpt.restore_latest(target)
  assert step == 0 and meta == {"history": [0]}
  np.testing.assert_array_equal(state["w"], np.arange(1000, dtype=np.float32))
  kept = [n for n in os.listdir(tmp_path) if n.startswith("1.")]
  assert len(kept) == 1 and kept[0].startswith("1" + checkpoint.UNREADABLE)  # kept, renamed
  lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(lines) == 1 and "step 1 is unreadable" in lines[0] and kept[0] in lines[0]
  assert "\n" not in lines[0]
  assert ckpt.all_steps() == [0]  # orbax does not see the renamed folder
  ckpt.save(2, {"w": np.zeros(1000, np.float32), "b": np.int32(2)}, {}, 0.0)
  ckpt.close()
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as reopened:
    assert reopened.all_steps() == [0, 2]


def test_no_readable_step_starts_from_scratch_and_says_what_was_tried(tmp_path, caplog):
  target = _two_steps(str(tmp_path))
  corrupt(str(tmp_path / "1"), "garbage_meta")
  corrupt(str(tmp_path / "0"), "truncated_file")
  caplog.set_level(logging.WARNING, logger="absl")
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.restore_latest(target) is None
  last = caplog.records[-1].getMessage()
  assert "no readable checkpoint" in last and "starting from scratch" in last
  assert "1 (now 1.unreadable-" in last and "0 (now 0.unreadable-" in last
  assert sorted(n.split(".")[0] for n in os.listdir(tmp_path)) == ["0", "1"]


def test_a_checkpoint_of_another_model_is_refused_not_set_aside(tmp_path):
  _two_steps(str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"w: shape \(1000,\) in the "
                     r"checkpoint, \(10,\) here"):
    ckpt.restore_latest({"w": np.zeros(10, np.float32), "b": np.int32(0)})
  with pytest.raises(checkpoint.CheckpointMismatchError, match="extra is not in the checkpoint"):
    ckpt.restore_latest({"w": np.zeros(1000, np.float32), "b": np.int32(0),
                         "extra": np.zeros(2)})
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ["0", "1"]


def test_async_saves_own_their_data_and_are_waited_for(tmp_path):
  """The caller's arrays and meta change right after an async save (as the next training
  step's donated buffers and the appended history do): the checkpoint holds the values
  at the time of the save; restore and close wait for the write."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=True)
  w, meta = np.ones(1 << 16, np.float32), {"history": [1]}
  for step in range(3):
    ckpt.save(step, {"w": w}, meta, float(step))
    w *= 2
    meta["history"].append(step)
  state, got = ckpt.restore(2, {"w": np.zeros_like(w)})
  np.testing.assert_array_equal(state["w"], np.full_like(w, 4.0))
  assert got == {"history": [1, 0, 1]}
  ckpt.save(3, {"w": w}, meta, 0.0)
  ckpt.close()
  ckpt.close()  # a second close does nothing
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as reopened:
    assert reopened.all_steps() == [2, 3]
  assert not [n for n in os.listdir(tmp_path) if "tmp" in n]


def _classifier_dir(directory):
  ckpt = checkpoint.Checkpointer(directory)
  for step, score in ((3, 9.0), (6, 1.0)):  # best 3, latest 6
    ckpt.save(step, {"params": {"k": np.full(4, step, np.float32)}, "batch_stats": {}},
              {"history": []}, score)
  ckpt.close()


def test_stage2_classifier_falls_back_from_an_unreadable_best(tmp_path, caplog):
  from fcam_jax import config_lib, inference  # pylint: disable=g-import-not-at-top
  _classifier_dir(str(tmp_path / "stage1"))
  config = config_lib.base_config()
  config.stage2.classifier_checkpoint = str(tmp_path / "stage1")
  variables, step = inference.load_classifier(config, str(tmp_path))
  assert step == 3 and variables["params"]["k"][0] == 3
  corrupt(str(tmp_path / "stage1" / "3"), "truncated_file")
  caplog.set_level(logging.WARNING, logger="absl")
  variables, step = inference.load_classifier(config, str(tmp_path))
  assert step == 6 and variables["params"]["k"][0] == 6
  assert any("the best classifier (step 3) is unreadable: using step 6" in r.getMessage()
             for r in caplog.records)
  assert sorted(os.listdir(tmp_path / "stage1")) == ["3", "6"]  # read only: nothing moved
  corrupt(str(tmp_path / "stage1" / "6"), "missing_file")
  with pytest.raises(checkpoint.CheckpointNotFoundError,
                     match=r"no readable checkpoint in .*stage1 \(tried step 3 \(.*\); step 6 "):
    inference.load_classifier(config, str(tmp_path))


def test_a_save_killed_mid_write_is_ignored_then_removed(tmp_path):
  """What a SIGKILL during a background write leaves (an uncommitted temporary folder) is
  not a step, and the next writer removes it; a read-only opener leaves it alone."""
  target = _two_steps(str(tmp_path))
  partial = tmp_path / "2.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "_METADATA").write_text("{")
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.all_steps() == [0, 1] and partial.exists()
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    step, _, _ = ckpt.restore_latest(target)
    assert step == 1 and ckpt.all_steps() == [0, 1]
  assert not partial.exists()
