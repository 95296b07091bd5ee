"""`dashjax-eval --config configs/NAME.py --workdir DIR [--config.eval.samples=8 ...]`.

Evaluates the latest checkpoint of the run in DIR on the held-out split: mean@k and pass@k with the unbiased
estimator. The run is only read: its metrics, eval.jsonl and checkpoints are never changed; the numbers go to
DIR/eval-stepN.json (DIR/eval-initial.json for a run with no checkpoint yet, which evaluates the initial model).
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from dashjax.cli.errors import CliError, config_value, run_absl

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint is evaluated).")
flags.DEFINE_integer("seed", 1234, "Sampling seed for evaluation.")
flags.DEFINE_integer("show", 3, "How many completions to print.")
flags.DEFINE_bool("verbose", False, "Print the full traceback of an error (it always goes to a log file).")
FLAGS = flags.FLAGS
PROG = "dashjax-eval"


def _evaluate() -> int:
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint step at INFO
  config = config_value(_CONFIG, sys.argv)
  if FLAGS.workdir is None:
    raise CliError("--workdir is required (the training run to evaluate)")
  from dashjax.store import paths

  if not paths.is_dir(FLAGS.workdir):
    raise CliError(f"--workdir {FLAGS.workdir} does not exist; give the folder of a training run")
  from dashjax.config import validate

  validate(config)
  if FLAGS.show < 0:
    raise CliError(f"--show={FLAGS.show} must be >= 0")
  from dashjax.train.trainer import Trainer

  trainer = Trainer(config, FLAGS.workdir, read_only=True)
  try:
    out = trainer.evaluate(seed=FLAGS.seed)
  finally:
    trainer.close()
  where = f"checkpoint step {trainer.step}" if trainer.resumed else "the initial model (the run has no checkpoint)"
  print(f"evaluated {where} on {out['num_prompts']} held-out prompts, {out['samples']} samples each")
  for k, v in out.items():
    if k.startswith("pass@") or k in ("accuracy", "stderr", "timed_out", "reward_errors"):
      print(f"  {k:13s} {v:.4f}" if isinstance(v, float) else f"  {k:13s} {v}")
  for text, ex in list(zip(out["texts"][::out["samples"]], trainer.heldout))[:FLAGS.show]:
    print(f"\n  Q: {ex.problem}\n  gold: {ex.answer}\n  model: {text.strip()[:300]}")
  name = f"eval-step{trainer.step}.json" if trainer.resumed else "eval-initial.json"
  path = paths.join(FLAGS.workdir, name)
  paths.write_text(path, json.dumps({k: v for k, v in out.items() if k != "texts"} | {"step": trainer.step,
                                                                                      "seed": FLAGS.seed}, indent=2))
  print(f"\nwrote {path}")
  return 0


def main():
  run_absl(PROG, _evaluate)


if __name__ == "__main__":
  main()
