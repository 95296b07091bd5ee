"""`dashjax-train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...] [--resume | --auto_resume |
--overwrite]`.

DIR is a local folder or a bucket URL (gs://bucket/run): logs, checkpoints and plots all go there. A workdir that
already holds a run (metrics.jsonl or checkpoints) is continued with --resume or moved aside with --overwrite (to
WORKDIR.replaced-YYYYmmdd-HHMMSS); without either it is refused, so two runs never mix. --auto_resume is the one
command for preemptible jobs: it continues the latest checkpoint when there is one and starts fresh in an empty
workdir."""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from dashjax.cli.errors import CliError, config_value, run_absl

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (optionally FILE:ARG).",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder or gs:// URL: metrics.jsonl, tb/, checkpoints/, curve.png.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
flags.DEFINE_bool("auto_resume", False, "Continue from the latest checkpoint if --workdir holds one, else start a "
                  "new run there (preemptible jobs: the same command every time).")
flags.DEFINE_integer("resume_step", None, "With --resume: continue from this checkpoint step instead of the latest "
                     "(later checkpoints are set aside, not deleted).")
flags.DEFINE_bool("overwrite", False, "Start over in a used --workdir: move the old run to "
                  "WORKDIR.replaced-YYYYmmdd-HHMMSS first.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("verbose", False, "Print the full traceback of an error (it always goes to a log file).")
FLAGS = flags.FLAGS
PROG = "dashjax-train"


def _error(message: str, status: int = 2) -> int:
  print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
  return status


def _train() -> int:
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint step at INFO
  from dashjax.parallel.distributed import initialize_from_env

  initialize_from_env()
  from dashjax.config import validate

  config = config_value(_CONFIG, sys.argv)
  if FLAGS.workdir is None:
    raise CliError("--workdir is required (where metrics, checkpoints and curve.png go)")
  import jax

  from dashjax.train import plan as size_plan

  if size_plan.is_auto(config):  # the sizes are chosen after the workdir is checked (a resumed run keeps its own)
    validate(size_plan.with_sizes(config, *size_plan.allowed(config, jax.device_count())[0]))
  else:
    validate(config)

  from dashjax.store import paths
  from dashjax.store import workdir as run_folder
  from dashjax.parallel.distributed import sync

  workdir = FLAGS.workdir
  if FLAGS.resume_step is not None and not FLAGS.resume:
    raise CliError(f"--resume_step={FLAGS.resume_step} needs --resume")
  problem = paths.problem(workdir) if paths.is_remote(workdir) else None  # bucket and credentials first
  if problem:
    raise CliError(f"--workdir {problem}")
  decision = run_folder.decide(workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                               auto_resume=FLAGS.auto_resume)
  if decision.problem:
    return _error(decision.problem)
  if decision.move_aside:
    sync("dashjax-train: workdir checked")  # every process has looked at the workdir before process 0 moves it
    if jax.process_index() == 0:
      print(f"--overwrite: moved the old run to {run_folder.move_aside(workdir)}", file=sys.stderr, flush=True)
    sync("dashjax-train: old run moved")
  problem = paths.problem(workdir)
  if problem:
    raise CliError(f"--workdir {problem}")
  if FLAGS.auto_resume:
    print(f"--auto_resume: {'continuing the run' if decision.resume else 'starting a new run'} in {workdir}",
          file=sys.stderr, flush=True)

  if size_plan.is_auto(config):
    config = _plan_sizes(config, workdir, decision.resume)
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  from dashjax.train.trainer import RunStopped, Trainer  # RL and SFT (config.mode) share one loop

  try:
    trainer = Trainer(config, workdir, resume=decision.resume, resume_step=FLAGS.resume_step)
  except RunStopped as e:  # e.g. a damaged checkpoint: named, with the previous one offered
    return _error(str(e), status=1)
  try:
    summary = trainer.run(progress=FLAGS.progress)
  except RunStopped as e:
    return _error(str(e), status=1)
  finally:
    trainer.close()
  if jax.process_index() == 0:
    _print_summary(summary)
  return 0


def _plan_sizes(config, workdir: str, resume: bool):
  """`auto` sizes: those the run chose before when it is resumed (its config.json), else the planner's, whose table is
  printed and kept in the workdir as plan.json."""
  import jax

  from dashjax.train import plan as size_plan
  from dashjax.store import paths

  recorded = None
  if resume and paths.exists(paths.join(workdir, "config.json")):
    old = json.loads(paths.read_text(paths.join(workdir, "config.json")))
    recorded = {"sampling.batch_size": old["sampling"]["batch_size"],
                "train.micro_batch_size": old["train"]["micro_batch_size"]}
    if any(not isinstance(v, int) for v in recorded.values()):
      recorded = None
    else:
      print(f"{PROG}: auto batch sizes: the run's own, sampling.batch_size={recorded['sampling.batch_size']}, "
            f"train.micro_batch_size={recorded['train.micro_batch_size']}", file=sys.stderr, flush=True)
  say = (lambda m: print(f"{PROG}: planning batch sizes: {m} ...", file=sys.stderr, flush=True)) \
      if jax.process_index() == 0 else None
  config, report = size_plan.resolve(config, recorded=recorded, progress=say)
  if report and jax.process_index() == 0:
    print(size_plan.format_table(report), file=sys.stderr, flush=True)
    paths.write_text(paths.join(workdir, "plan.json"), json.dumps(report, indent=2))
  return config


def _print_summary(summary: dict):
  before, after = summary.get("before"), summary.get("after")
  if before and after:
    gain = after["accuracy"] - before["accuracy"]
    print(f"\nheld-out accuracy: before {before['accuracy']:.3f} +/- {before['stderr']:.3f}, after "
          f"{after['accuracy']:.3f} +/- {after['stderr']:.3f} (change {gain:+.3f})")
  if "curve" in summary:
    print(f"training curve: {summary['curve']}")
  from dashjax.store import paths

  paths.write_text(paths.join(summary["workdir"], "summary.json"), json.dumps(summary, indent=2, default=str))


def main():
  run_absl(PROG, _train)


if __name__ == "__main__":
  main()
