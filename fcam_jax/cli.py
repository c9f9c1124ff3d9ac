"""What every command shares: one-line errors, quiet libraries, config files and flags.

A command ends bad input with one `error: <message>` line on stderr and exit code 2
(`USAGE`: the command line is wrong: a flag, an argument, a config value, a path given
that names nothing) or 1 (`DATA`: what it was pointed at is wrong: files, metadata,
images, score maps, checkpoints), and no traceback unless `--verbose` is given (then
the traceback comes first; the line and the exit status stay the same).
`run(main, ...)` does this for an absl command, `call(fn, ...)` for an argparse one
(with `ArgumentParser`); a command's own checks raise `fail(message, code)`. Errors of
kinds a command does not list are bugs: they keep their traceback.

This module imports no JAX (config_lib is imported where a config is read), so the
commands that need none start in a fraction of a second.
"""

import argparse
import importlib.util
import logging as logging_lib
import os
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional, Sequence, Tuple, Type

from absl import app
from absl import flags
from absl import logging

from fcam_jax import errors

USAGE = 2
DATA = 1

Errors = Tuple[Type[BaseException], ...]


class CommandError(Exception):
  """Bad input a command found itself (`fail`); `code` is the exit status."""

  def __init__(self, message: str, code: int = USAGE):
    super().__init__(message)
    self.code = code


def fail(message: str, code: int = USAGE) -> NoReturn:
  """Ends the command with `error: message` and exit status `code` (through `run`/`call`)."""
  raise CommandError(message, code)


# Usage errors whatever the command: absl's flag and usage errors, argparse's, bad configs.
_ALWAYS_USAGE = (flags.Error, app.UsageError, argparse.ArgumentError, errors.ConfigError)


def exit_code(error: BaseException, usage_errors: Errors = (), data_errors: Errors = ()
              ) -> Optional[int]:
  """USAGE or DATA for an error of the listed kinds (the most specific class listed
  decides: a DATA subclass of a USAGE error is DATA), else None (a bug)."""
  if isinstance(error, CommandError):
    return error.code
  usage, data = set(usage_errors) | set(_ALWAYS_USAGE), set(data_errors)
  for cls in type(error).__mro__:
    if cls in data:
      return DATA
    if cls in usage:
      return USAGE
  return None


def one_line(error: BaseException) -> str:
  """The error's message on one line (its lines joined with '; ')."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return "; ".join(lines) or type(error).__name__


def _report(error: BaseException, code: Optional[int], verbose: bool) -> int:
  """Prints the `error:` line (after the traceback with `verbose`) and returns `code`;
  re-raises a bug (called inside an `except`)."""
  if code is None:
    raise  # pylint: disable=misplaced-bare-raise
  if verbose:
    traceback.print_exc()
  print(f"error: {one_line(error)}", file=sys.stderr)
  return code


def call(fn: Callable[..., Any], *args, verbose: bool = False, usage_errors: Errors = (),
         data_errors: Errors = ()) -> Any:
  """`fn(*args)`, a command's body returning its exit status (or None); an error of the
  listed kinds (or `fail`) becomes one `error:` line and its status (after the traceback
  with `verbose`)."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    return _report(e, exit_code(e, usage_errors, data_errors), verbose)


def _verbose_in(argv: Sequence[str]) -> bool:
  return any(a == "--verbose" or a.lower() in ("--verbose=true", "--verbose=1")
             for a in argv[1:])


def parse_flags(argv: Sequence[str]):
  """absl's flag parsing; its errors are USAGE (see `run`)."""
  return flags.FLAGS(argv)


def run(main: Callable[[Sequence[str]], Any], *, usage_errors: Errors = (),
        data_errors: Errors = (), flags_parser: Callable = parse_flags):
  """`absl.app.run(main)` with one-line errors: a flag error (unknown, missing, malformed),
  `app.UsageError`, a ConfigError, `fail` and the listed errors end in `error: ...` and
  exit status USAGE / DATA; `--verbose` (defined here) prints their traceback first."""
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "On an error, show its traceback too.")

  def parse(argv):
    try:
      return flags_parser(argv)
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(_report(e, exit_code(e), _verbose_in(argv)))

  def guarded(argv):
    return call(main, argv, verbose=flags.FLAGS.verbose, usage_errors=usage_errors,
                data_errors=data_errors)

  app.run(guarded, flags_parser=parse)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with usage errors as one line `error: ... (see PROG --help)` and exit
  status 2 (use it as the subparsers' `parser_class` too)."""

  def error(self, message):
    sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
    sys.exit(USAGE)


def add_verbose_flag(parser: argparse.ArgumentParser):
  """`--verbose`, for `call(..., verbose=args.verbose)`."""
  parser.add_argument("--verbose", action="store_true", help="on an error, show its traceback too")


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
    raise errors.ConfigError(f"{kind} file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(f"fcam_{kind}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise errors.ConfigError(f"{path} has no {function}(arg=None)")
  return getattr(module, function)(arg or None)


def _unknown_override(argv: Sequence[str]) -> str:
  """The message for the first `--config.a.b=...` whose key does not exist, or ''."""
  from fcam_jax import config_lib  # pylint: disable=g-import-not-at-top (JAX: only for configs)
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
  except errors.ConfigError as e:
    fail(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    try:
      message = _unknown_override(argv)
    except Exception:  # pylint: disable=broad-except
      message = ""
    fail(message or f"{type(e).__name__}: {e}")
