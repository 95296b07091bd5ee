"""One clear line for every command-line failure: `PROG: error: ...` on stderr, a non-zero exit, and the traceback
kept in a log file (printed as well with --verbose).

Errors the user can fix (a bad config, a missing file, an unusable workdir, a full disk) read as a sentence that
names the input; anything else reads as `ExceptionType: message` with the log file's path, so a bug report has
the whole traceback without the terminal drowning in it.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import time
import traceback


class CliError(Exception):
  """A user-facing failure whose message is already the one line to print."""


def _one_line(text: str, limit: int = 600) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _in_chain(exc: BaseException, test):
  seen = set()
  while exc is not None and id(exc) not in seen:
    if test(exc):
      return exc
    seen.add(id(exc))
    exc = exc.__cause__ or exc.__context__
  return None


def describe(exc: BaseException) -> str:
  """The one-line message for an exception raised anywhere below a command-line tool."""
  from dashjax.config import ConfigError

  if isinstance(exc, (CliError, ConfigError)):
    return _one_line(exc)
  full = _in_chain(exc, lambda e: isinstance(e, OSError) and e.errno == errno.ENOSPC)
  if full is not None:  # often wrapped (Orbax, TensorBoard): the cause, not the wrapper, is what the user can fix
    where = f" writing {full.filename}" if full.filename else ""
    return (f"no space left on device{where}: free some space or point --workdir elsewhere, then rerun (with "
            f"--resume if a checkpoint was saved)")
  if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.EISDIR) and \
      exc.filename:
    return f"cannot write {exc.filename}: {exc.strerror}"
  if isinstance(exc, (FileNotFoundError, ValueError, KeyError, RuntimeError, TimeoutError)):
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return _one_line(msg) or type(exc).__name__
  return _one_line(f"{type(exc).__name__}: {exc}")


def _log_traceback(prog: str, exc: BaseException) -> str | None:
  """Writes the traceback to a temporary log file; None if even that fails (a full disk)."""
  path = os.path.join(tempfile.gettempdir(), f"{prog}-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
  try:
    with open(path, "w") as f:
      f.write(" ".join(sys.argv) + "\n\n")
      traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
    return path
  except OSError:
    return None


def _user_facing(exc: BaseException) -> bool:
  """Errors in the user's input, whose message says all there is: no traceback log for those."""
  from dashjax.config import ConfigError
  from dashjax.data.examples import DataError

  return isinstance(exc, (CliError, ConfigError, DataError, FileNotFoundError))


def report(prog: str, exc: BaseException, verbose: bool) -> int:
  """Prints the one line (after the traceback with `verbose`); returns the exit status."""
  if verbose:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
  line = describe(exc)
  if not verbose and not _user_facing(exc):
    log = _log_traceback(prog, exc)
    if log:
      line += f" (traceback: {log}; --verbose prints it)"
  print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
  return 2 if _user_facing(exc) else 1


def _config_problem(exc: BaseException, argv: list[str]) -> str:
  """The one line for a config that does not load: a missing or failing file, or an override of a missing field
  (ml_collections reports those while parsing flags or on first access, as AttributeError/KeyError/OSError)."""
  if isinstance(exc, (AttributeError, KeyError)):  # --config.rl.algoo=...: "'algoo'\nDid you mean "algo" ..."
    text = " ".join(str(exc).replace("\\n", " ").replace("\\'", "'").strip("'\"").split())
    name = re.match(r"'?([^'\s]+)'?", text)
    flag = next((a.split("=")[0] for a in argv if name and a.startswith("--config.") and
                 name.group(1) in a.split("=")[0].split(".")[1:]), None)
    hint = re.search(r"[Dd]id you mean \"?([^\"?]+)\"?", text)
    fix = f"; did you mean {hint.group(1)!r}?" if hint else ""
    return f"{flag or '--config override'}: no such config field{fix}"
  if isinstance(exc, OSError):
    m = re.search(r"Attempted.*?\n\s+(\S+)\n\s+(\[Errno[^\n]*)", str(exc), re.S)
    cause = exc.__cause__
    if m is None and cause is not None:
      m = re.search(r"Attempted.*?\n\s+(\S+)\n\s+(\[Errno[^\n]*)", str(cause), re.S)
    where = f"{m.group(1)}: {m.group(2).strip()}" if m else _one_line(cause or exc)
    return f"--config: cannot load the config file ({where})"
  return f"--config: {_one_line(exc)}"  # get_config() raised, or an override value does not convert


def config_value(config_flag, argv: list[str]):
  """`config_flag.value`, with every way a config fails to load turned into one CliError line."""
  try:
    value = config_flag.value
    if value is not None:
      value.get("mode")  # a file that failed to load is a placeholder that raises on first access
  except (AttributeError, KeyError, OSError, ValueError, TypeError, ImportError, SyntaxError) as e:
    raise CliError(_config_problem(e, argv)) from None
  if value is None:
    raise CliError("--config is required (a configs/*.py file, e.g. --config configs/smollm2_arith.py)")
  return value


def parse_flags(prog: str):
  """An absl `flags_parser` that reports flag errors (unknown flags, bad values, config overrides of fields that
  do not exist) as one line."""

  def parser(argv):
    from absl import flags

    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      text = str(e)
      if "Traceback (most recent call last)" in text:  # a config file whose get_config() raised: keep its last line
        head, _, tail = text.partition("Traceback (most recent call last)")
        text = f"{head.rstrip().rstrip(':')}: {tail.strip().splitlines()[-1]}"
      line = _one_line(text)
    except SyntaxError as e:
      line = f"--config: {e.filename}:{e.lineno}: SyntaxError: {e.msg}"
    except Exception as e:  # noqa: BLE001 -- anything else a config file or override can raise while parsing
      line = _config_problem(e, argv)
    print(f"{prog}: error: {line}", file=sys.stderr, flush=True)
    sys.exit(2)

  return parser


def run_absl(prog: str, body) -> None:
  """Runs `body()` as an absl program whose every failure (flags included) is one line (see `report`)."""
  import logging

  from absl import app, flags

  logging.getLogger("absl").setLevel(logging.WARNING)

  def _main(argv):
    del argv
    try:
      return body()
    except Exception as e:  # the traceback goes to a log file (and to stderr with --verbose)
      return report(prog, e, flags.FLAGS.verbose)

  app.run(_main, flags_parser=parse_flags(prog))
