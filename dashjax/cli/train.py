"""`dashjax-train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...] [--resume | --overwrite]`.

A workdir that already holds a run (metrics.jsonl or checkpoints) is continued with --resume or moved aside with
--overwrite (to WORKDIR.replaced-YYYYmmdd-HHMMSS); without either it is refused, so two runs never mix."""

from __future__ import annotations

import json
import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from dashjax.cli.errors import CliError, config_value, run_absl

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (optionally FILE:ARG).",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder: metrics.jsonl, tb/, checkpoints/, curve.png.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
flags.DEFINE_bool("overwrite", False, "Start over in a used --workdir: move the old run to "
                  "WORKDIR.replaced-YYYYmmdd-HHMMSS first.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("verbose", False, "Print the full traceback of an error (it always goes to a log file).")
FLAGS = flags.FLAGS
PROG = "dashjax-train"


def _error(message: str, status: int = 2) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
  return status


def _run_state(workdir: str) -> tuple[bool, list[int], bool]:
  """(metrics.jsonl exists, finished checkpoint steps, checkpoints/ holds anything) -- read only, no side effects."""
  has_metrics = os.path.isfile(os.path.join(workdir, "metrics.jsonl"))
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
  except (FileNotFoundError, NotADirectoryError):
    names = []
  return has_metrics, sorted(int(n) for n in names if n.isdigit()), bool(names)


def _check_workdir(workdir: str, resume: bool, overwrite: bool) -> tuple[str | None, bool]:
  """(an error message or None, whether the old run must be moved aside). Changes nothing on disk."""
  if resume and overwrite:
    return "--resume and --overwrite contradict each other: continue the run in WORKDIR or start over, not both", False
  if "://" in workdir:  # remote workdirs (gs://...) are not inspected here
    return None, False
  has_metrics, steps, has_checkpoints = _run_state(workdir)
  if resume:
    if steps:
      return None, False
    fix = ("start over with --overwrite (moves the old logs aside)" if has_metrics or has_checkpoints else
           "start a new run without --resume")
    return f"--resume: {workdir} holds no checkpoint to resume from; {fix}", False
  if not (has_metrics or has_checkpoints):
    return None, False
  if overwrite:
    return None, True
  held = (["metrics.jsonl"] if has_metrics else []) + (
      [f"checkpoints up to step {steps[-1]}"] if steps else ["an unfinished checkpoint"] if has_checkpoints else [])
  return (f"{workdir} already holds a run ({', '.join(held)}); continue it with --resume, or start over with "
          f"--overwrite (moves the old run to {workdir.rstrip(os.sep)}.replaced-YYYYmmdd-HHMMSS)"), False


def _move_aside(workdir: str) -> str:
  base = f"{workdir.rstrip(os.sep)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
  target, n = base, 1
  while os.path.exists(target):
    n += 1
    target = f"{base}-{n}"
  os.rename(workdir, target)
  return target


def _writable(workdir: str):
  """Creates workdir (and parents) and proves a file can be written there, before the model loads."""
  if "://" in workdir:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise CliError(f"--workdir {workdir} is a file, not a folder")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    import errno

    if e.errno == errno.ENOSPC:
      raise
    raise CliError(f"--workdir {workdir} is not writable: {e.strerror} ({e.filename or workdir})") from None


def _train() -> int:
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint step at INFO
  from dashjax.parallel.distributed import initialize_from_env

  initialize_from_env()
  from dashjax.config import validate

  config = config_value(_CONFIG, sys.argv)
  if FLAGS.workdir is None:
    raise CliError("--workdir is required (where metrics, checkpoints and curve.png go)")
  validate(config)
  import jax

  problem, move = _check_workdir(FLAGS.workdir, FLAGS.resume, FLAGS.overwrite)
  if problem:
    return _error(problem)
  if move:
    from jax.experimental import multihost_utils

    multi = jax.process_count() > 1
    if multi:  # every process has looked at the workdir before process 0 moves it
      multihost_utils.sync_global_devices("dashjax-train: workdir checked")
    if jax.process_index() == 0:
      print(f"--overwrite: moved the old run to {_move_aside(FLAGS.workdir)}", file=sys.stderr, flush=True)
    if multi:
      multihost_utils.sync_global_devices("dashjax-train: old run moved")
  _writable(FLAGS.workdir)

  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  from dashjax.train.trainer import RunStopped, Trainer  # RL and SFT (config.mode) share one loop

  trainer = Trainer(config, FLAGS.workdir, resume=FLAGS.resume)
  try:
    summary = trainer.run(progress=FLAGS.progress)
  except RunStopped as e:
    return _error(str(e), status=1)
  finally:
    trainer.close()
  if jax.process_index() == 0:
    _print_summary(summary)
  return 0


def _print_summary(summary: dict):
  before, after = summary.get("before"), summary.get("after")
  if before and after:
    gain = after["accuracy"] - before["accuracy"]
    print(f"\nheld-out accuracy: before {before['accuracy']:.3f} +/- {before['stderr']:.3f}, after "
          f"{after['accuracy']:.3f} +/- {after['stderr']:.3f} (change {gain:+.3f})")
  if "curve" in summary:
    print(f"training curve: {summary['curve']}")
  with open(os.path.join(summary["workdir"], "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)


def main():
  run_absl(PROG, _train)


if __name__ == "__main__":
  main()
