"""`dashjax-train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...] [--resume]`."""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (optionally FILE:ARG).",
                                          lock_config=True)
flags.DEFINE_string("workdir", None, "Output folder: metrics.jsonl, tb/, checkpoints/, curve.png.")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
FLAGS = flags.FLAGS


def _main(argv):
  del argv
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint step at INFO
  from dashjax.parallel.distributed import initialize_from_env

  initialize_from_env()
  from dashjax.config import ConfigError, validate

  config = _CONFIG.value
  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required (where metrics, checkpoints and curve.png go)")
  try:
    validate(config)
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  os.makedirs(FLAGS.workdir, exist_ok=True)
  import jax

  if jax.process_index() == 0:
    with open(os.path.join(FLAGS.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  from dashjax.train.trainer import Trainer  # RL and SFT (config.mode) share one loop

  trainer = Trainer(config, FLAGS.workdir, resume=FLAGS.resume)
  try:
    summary = trainer.run(progress=FLAGS.progress)
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
  logging.getLogger("absl").setLevel(logging.WARNING)
  app.run(_main)


if __name__ == "__main__":
  main()
