"""Checkpointer: keeps the latest and the best step, and says which is which."""

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
