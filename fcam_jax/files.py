"""Files written whole or not at all: a temporary file in the same folder, then a rename.

A reader (a rerun after a crash, `report`, another process) never sees half a file.
"""

import io
import json
import os
from typing import Any, Union

import numpy as np


def write_atomic(path: str, data: Union[bytes, str]):
  """Writes `data` to `path` through `<path>.tmp<pid>` and `os.replace`."""
  tmp = f"{path}.tmp{os.getpid()}"
  mode = "wb" if isinstance(data, bytes) else "w"
  try:
    with open(tmp, mode) as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any, indent: int = 2):
  """`obj` as JSON (values JSON cannot hold are written as their str())."""
  write_atomic(path, json.dumps(obj, indent=indent, default=str))


def save_npy(path: str, array: np.ndarray):
  buf = io.BytesIO()
  np.save(buf, np.asarray(array))
  write_atomic(path, buf.getvalue())


def check_writable(directory: str, what: str = "folder"):
  """Creates `directory`; raises OSError naming it (as `what`) if no file can be written there."""
  os.makedirs(directory, exist_ok=True)
  probe = os.path.join(directory, f".write_test_{os.getpid()}")
  try:
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"{what} {directory} is not writable: {e}") from e
