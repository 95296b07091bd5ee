"""`dashjax-plan --config CONFIG [--config.KEY=VALUE ...] [--topology v5e:2x4] [--json PATH] [--margin 0.1]`.

Chooses `sampling.batch_size` and `train.micro_batch_size` (see `dashjax.train.plan`): every allowed pair, whether
each fits a chip, and the time per update, predicted by the TPU compiler's cost model for a slice (`--topology`, no
TPU needed) or measured on the local devices. Both sizes are planned even where the config sets them; the config's
own pair is reported beside the choice. Exit status 0, or 2 for a bad config, topology, or when nothing fits.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from dashjax.cli.errors import CliError, config_value, run_absl

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (optionally FILE:ARG).",
                                          lock_config=True)
flags.DEFINE_string("topology", "", "A TPU slice such as v5e:2x4, v4:2x2x1, v5p:2x2x1 or v6e:2x2 (needs libtpu: pip "
                    "install -e '.[tpu]'); empty: the local devices, timed.")
flags.DEFINE_string("json", "", "Also write the plan as JSON to this path.")
flags.DEFINE_float("margin", 0.10, "Share of each chip's memory left free.")
flags.DEFINE_float("kept_fraction", None, "Share of groups a filtering algorithm (dash) is expected to backprop "
                   "(a run's metrics.jsonl has it as kept_fraction); 1: every group, an upper bound. Default: "
                   "unknown, every number of kept groups equally likely (what dashjax-train plans with).")
flags.DEFINE_bool("confirm", False, "With --topology: compile the chosen sizes' programs at the model's full size.")
flags.DEFINE_bool("verbose", False, "Print the full traceback of an error.")
FLAGS = flags.FLAGS
PROG = "dashjax-plan"


def _plan() -> int:
  if FLAGS.topology:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  if _CONFIG.value is None:
    raise CliError("--config is required (e.g. --config configs/qwen25_math.py:0.5b)")
  if FLAGS.kept_fraction is not None and not 0.0 <= FLAGS.kept_fraction <= 1.0:
    raise CliError(f"--kept_fraction={FLAGS.kept_fraction} must be in [0, 1]")
  if not 0.0 <= FLAGS.margin < 1.0:
    raise CliError(f"--margin={FLAGS.margin} must be in [0, 1)")
  config = config_value(_CONFIG, sys.argv)
  from dashjax.train import plan
  from dashjax.train.fit import FitError

  try:
    report = plan.plan(config, topology=FLAGS.topology, margin=FLAGS.margin, free=True, confirm=FLAGS.confirm,
                       kept_fraction=FLAGS.kept_fraction,
                       progress=lambda m: print(f"{PROG}: {m} ...", file=sys.stderr, flush=True))
  except FitError as e:
    raise CliError(str(e)) from None
  print(plan.format_table(report))
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, "w") as f:
      json.dump(report, f, indent=2)
  return 0


def main():
  run_absl(PROG, _plan)


if __name__ == "__main__":
  main()
