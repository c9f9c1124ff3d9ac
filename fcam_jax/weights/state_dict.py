"""Read a torchvision state dict as {key: numpy array}: .pth, .safetensors or .npz.

No format here runs pickled code: `.pth` goes through `torch.load(weights_only=True)`
(torch is optional), `.safetensors` is parsed with numpy (an 8-byte little-endian
header length, a JSON header, then the raw little-endian buffers), `.npz` is read
with `allow_pickle=False`.
"""

import json
import os
import struct
from typing import Dict

import numpy as np


class PretrainedError(ValueError):
  """A checkpoint that cannot be read or does not fit the model (names the file/key)."""


# safetensors dtype -> numpy dtype of the stored buffer (BF16: raw uint16 bits).
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
  """bfloat16 stored as uint16 -> float32 (bf16 is the top half of a float32)."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
  """Parses a .safetensors file; BF16/F16 tensors come back as float32."""
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise PretrainedError(f"{path}: not a safetensors file (shorter than its header size)")
  (n,) = struct.unpack("<Q", data[:8])
  if 8 + n > len(data):
    raise PretrainedError(f"{path}: not a safetensors file (header of {n} bytes past the end)")
  try:
    header = json.loads(data[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PretrainedError(f"{path}: unreadable safetensors header ({e})") from None
  if not isinstance(header, dict):
    raise PretrainedError(f"{path}: safetensors header is not a JSON object")
  buffer = memoryview(data)[8 + n:]
  out = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    dtype = info.get("dtype")
    if dtype not in _SAFETENSORS_DTYPES:
      raise PretrainedError(f"{path}: tensor {key!r} has unsupported dtype {dtype!r}")
    np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
    shape = tuple(int(s) for s in info["shape"])
    begin, end = (int(o) for o in info["data_offsets"])
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= len(buffer) or end - begin != count * np_dtype.itemsize:
      raise PretrainedError(
          f"{path}: tensor {key!r} {dtype}{list(shape)} has data_offsets [{begin}, {end}] "
          f"that do not fit its size or the {len(buffer)}-byte buffer")
    array = np.frombuffer(buffer[begin:end], np_dtype).reshape(shape)
    if dtype == "BF16":
      array = bfloat16_bits_to_float32(array)
    elif dtype == "F16":
      array = array.astype(np.float32)
    out[key] = np.array(array)  # own the memory, native byte order
  return out


def read_npz(path: str) -> Dict[str, np.ndarray]:
  """An .npz of plain arrays; object (pickled) arrays are refused."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      out = {}
      for key in npz.files:
        try:
          out[key] = npz[key]
        except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
          raise PretrainedError(f"{path}: refusing to unpickle entry {key!r} ({e})") from None
      return out
  except PretrainedError:
    raise
  except (ValueError, OSError, EOFError) as e:
    raise PretrainedError(f"{path}: not a readable .npz file ({e})") from None


def _unwrap(obj, path: str):
  """A state dict, possibly saved inside {'state_dict': ...} or {'model': ...}."""
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict):
    raise PretrainedError(f"{path}: expected a state dict, found {type(obj).__name__}")
  return obj


def read_pth(path: str) -> Dict[str, np.ndarray]:
  """torch.load(weights_only=True): plain tensors only, never arbitrary pickled code."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise PretrainedError(
        f"{path}: reading a .pth file needs torch (pip install torch); or convert it "
        "to .safetensors / .npz elsewhere") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (UnpicklingError, zip errors)
    raise PretrainedError(f"{path}: torch.load(weights_only=True) refused it: {e}") from None
  out = {}
  for key, value in _unwrap(obj, path).items():
    if not isinstance(value, torch.Tensor):
      raise PretrainedError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    out[key] = (value.float() if value.is_floating_point() else value).numpy()
  return out


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
  """{key: array} from a .pth / .pt, .safetensors or .npz file (by extension)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pretrained weights file not found: {path!r}")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt", ".bin"):
    return read_pth(path)
  if ext == ".safetensors":
    return read_safetensors(path)
  if ext == ".npz":
    return read_npz(path)
  raise PretrainedError(f"{path}: unknown checkpoint format {ext!r}; use .pth, .safetensors "
                        "or .npz")
