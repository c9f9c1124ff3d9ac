"""What every command shares: one-line errors, quiet libraries, config files and flags.

A command ends bad input with one `error: <message>` line on stderr and exit code 2
(`USAGE`: a flag, argument or config) or 1 (`DATA`: the files it was pointed at).
"""

import importlib.util
import logging as logging_lib
import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import flags
from absl import logging

from fcam_jax import config_lib

USAGE = 2
DATA = 1


def fail(message: str, code: int = USAGE) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


class QuietLibraries(logging_lib.Filter):
  """Drops INFO records of orbax and tfds (a dozen lines per checkpoint save or restore)."""

  def filter(self, record):
    return record.levelno >= logging_lib.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def quiet_libraries():
  logging.get_absl_handler().addFilter(QuietLibraries())


def load_python_file(spec: str, function: str, kind: str = "config") -> Any:
  """`function(arg or None)` of the file of `spec` = `path.py[:arg]` (a config or sweep
  file); ConfigError naming the file if it is missing or lacks the function."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"{kind} file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(f"fcam_{kind}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise config_lib.ConfigError(f"{path} has no {function}(arg=None)")
  return getattr(module, function)(arg or None)


def _unknown_override(argv: Sequence[str]) -> str:
  """The message for the first `--config.a.b=...` whose key does not exist, or ''."""
  config = None
  for arg in argv[1:]:
    m = re.match(r"--config\.([\w.]+)(=|$)", arg)
    if not m:
      continue
    if config is None:
      spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
      config = load_python_file(spec, "get_config")
    message = config_lib.unknown_key_message(config, m.group(1), repr(arg))
    if message:
      return message
  return ""


def parse_config_flags(argv: Sequence[str]):
  """absl's flag parsing, with one-line messages for bad configs instead of tracebacks."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].partition(":")[0]
      if not os.path.isfile(path):
        fail(f"config file not found: {path}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # config_flags embeds get_config's traceback: keep its last line.
      last = [l for l in message.splitlines() if l.strip()][-1]
      message = re.sub(r"^[\w.]*(ConfigError|Error|Exception): ", "", last.strip())
    fail(message)
  except config_lib.ConfigError as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    try:
      message = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      message = ""
    fail(message or f"{type(e).__name__}: {e}")


def run_guarded(fn: Callable[[], Any], usage_errors=(), data_errors=()) -> Any:
  """fn(), with `usage_errors` ending in `error:` + exit 2 and `data_errors` in exit 1."""
  try:
    return fn()
  except usage_errors as e:
    fail(str(e), USAGE)
  except data_errors as e:
    fail(str(e), DATA)
