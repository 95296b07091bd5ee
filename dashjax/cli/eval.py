"""`dashjax-eval --config configs/NAME.py --workdir DIR [--config.eval.samples=8 ...]`.

Evaluates the latest checkpoint in DIR (or the initial model when there is none) on the held-out split: mean@k and
pass@k with the unbiased estimator. Writes DIR/eval.jsonl and prints the numbers.
"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint is evaluated).")
flags.DEFINE_integer("seed", 1234, "Sampling seed for evaluation.")
flags.DEFINE_integer("show", 3, "How many completions to print.")
FLAGS = flags.FLAGS


def _main(argv):
  del argv
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax logs every checkpoint step at INFO
  from dashjax.train.trainer import Trainer

  if FLAGS.workdir is None:
    raise app.UsageError("--workdir is required")
  config = _CONFIG.value
  trainer = Trainer(config, FLAGS.workdir, resume=True)
  try:
    out = trainer.evaluate(seed=FLAGS.seed)
  finally:
    trainer.close()
  where = f"checkpoint step {trainer.step}" if trainer.resumed else "the initial model (no checkpoint found)"
  print(f"evaluated {where} on {out['num_prompts']} held-out prompts, {out['samples']} samples each")
  for k, v in out.items():
    if k.startswith("pass@") or k in ("accuracy", "stderr", "timed_out"):
      print(f"  {k:10s} {v:.4f}" if isinstance(v, float) else f"  {k:10s} {v}")
  for text, ex in list(zip(out["texts"][::out["samples"]], trainer.heldout))[:FLAGS.show]:
    print(f"\n  Q: {ex.problem}\n  gold: {ex.answer}\n  model: {text.strip()[:300]}")
  with open(os.path.join(FLAGS.workdir, "eval_summary.json"), "w") as f:
    json.dump({k: v for k, v in out.items() if k != "texts"} | {"step": trainer.step}, f, indent=2)
  return 0


def main():
  logging.getLogger("absl").setLevel(logging.WARNING)
  app.run(_main)


if __name__ == "__main__":
  main()
