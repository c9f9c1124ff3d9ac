"""The class index shared by the splits: `<out>/class_names.txt`, line k = the name of label k.

The train split creates it and may extend it (new names appended in sorted order, so
labels already given never change); val and test only read it, so that one name has one
label in every split. Write the file yourself before converting train to fix the order.
"""

import os
from typing import Dict, List, Sequence

from fcam_jax.data.converters.common import ConvertError, Item

FILE = "class_names.txt"
TRAIN = "train"


def atomic_write(path: str, text: str):
  """Writes `text` to `path` through a temporary file and a rename."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  os.replace(tmp, path)


class ClassIndex:
  """The names of `<out>/class_names.txt` (none yet if the file is absent)."""

  def __init__(self, out: str):
    self.path = os.path.join(out, FILE)
    self.names: List[str] = []
    self.added: List[str] = []
    if os.path.isfile(self.path):
      self._read()

  def _read(self):
    try:
      with open(self.path, encoding="utf-8", newline="") as f:
        lines = [line.rstrip("\r") for line in f.read().split("\n")]
    except (OSError, UnicodeDecodeError) as e:
      raise ConvertError(f"{self.path}: unreadable ({e})") from e
    if lines and lines[-1] == "":
      lines.pop()
    seen: Dict[str, int] = {}
    for n, name in enumerate(lines, 1):
      if not name.strip() or name != name.strip():
        raise ConvertError(f"{self.path}:{n}: class name {name!r} is empty or has surrounding "
                           "spaces (one name a line, line k = label k)")
      if name in seen:
        raise ConvertError(f"{self.path}:{n}: class {name!r} repeats line {seen[name]}")
      seen[name] = n
    self.names = lines

  def labels(self, items: Sequence[Item], split: str) -> List[int]:
    """Each item's label; names not in the file are added for train, an error otherwise."""
    index = {name: k for k, name in enumerate(self.names)}
    new = sorted({it.label for it in items} - set(index))
    if new and split != TRAIN:
      first = next(it for it in items if it.label in new)
      state = f"is not in {self.path}" if self.names else f"is unknown: {self.path} does not exist"
      raise ConvertError(f"{first.where}: class {first.label!r} {state}; only the train split "
                         f"adds classes (convert train first){_more(new)}")
    for name in new:
      index[name] = len(self.names)
      self.names.append(name)
    self.added = new
    return [index[it.label] for it in items]

  def write(self):
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    atomic_write(self.path, "".join(name + "\n" for name in self.names))


def _more(new: Sequence[str]) -> str:
  if len(new) == 1:
    return ""
  shown = ", ".join(repr(n) for n in new[:5])
  return f" ({len(new)} unknown classes: {shown}{', ...' if len(new) > 5 else ''})"
