"""`dashjax-fit --config CONFIG [--config.KEY=VALUE ...] [--topology v5e:2x4] [--json PATH] [--programs a,b]`.

Compiles, without running, every program of a training step for a TPU slice (libtpu describes one on any machine)
or for the local devices, and prints per-chip memory against the chip's and a verdict. Exit status 0 when every
program fits, 1 when one does not, 2 for a bad config or topology.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (optionally FILE:ARG).",
                                          lock_config=True)
flags.DEFINE_string("topology", "", "A TPU slice such as v5e:2x4, v5e:2x2, v4:2x2x1, v5p:2x2x1, v6e:2x2 (needs "
                    "libtpu: pip install -e '.[tpu]' in the checkout); empty: the local devices.")
flags.DEFINE_string("json", "", "Also write the report as JSON to this path.")
flags.DEFINE_list("programs", [], "Only these programs (sampler, micro_step, apply, eval_sampler, sampler_cast; decode: the "
                  "sampler's start and one decode step, costed).")
flags.DEFINE_integer("decode_context", 1024, "Keys per row at which one decode step is costed against its floor "
                     "(continuous sampler; 0: not costed).")
FLAGS = flags.FLAGS


def _main(argv):
  del argv
  if FLAGS.topology:
    # Everything but the AOT compile stays on the CPU; libtpu's start-up probe needs a worker name to stay quiet.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from dashjax.config import ConfigError
  from dashjax.train.fit import FitError, check, format_report

  if _CONFIG.value is None:
    print("dashjax-fit: error: --config is required (e.g. --config configs/qwen25_math.py:0.5b)", file=sys.stderr)
    return 2
  config = _CONFIG.value
  try:
    from dashjax.train import plan as size_plan

    if size_plan.is_auto(config):  # what would run: the planner's sizes for this target
      planned = size_plan.plan(config, topology=FLAGS.topology,
                               progress=lambda m: print(f"planning batch sizes: {m} ...", file=sys.stderr, flush=True))
      choice = planned["choice"]
      config = size_plan.with_sizes(config, choice["sampling.batch_size"], choice["train.micro_batch_size"])
      print(f"auto batch sizes: sampling.batch_size={choice['sampling.batch_size']}, train.micro_batch_size="
            f"{choice['train.micro_batch_size']} (dashjax-plan shows the table)", file=sys.stderr, flush=True)
    report = check(config, topology=FLAGS.topology, programs_wanted=FLAGS.programs or None,
                   decode_context=FLAGS.decode_context,
                   progress=lambda name: print(f"compiling {name} ...", file=sys.stderr, flush=True))
  except (ConfigError, FitError, ValueError) as e:
    print(f"dashjax-fit: error: {e}", file=sys.stderr)
    return 2
  print(format_report(report))
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, "w") as f:
      json.dump(report, f, indent=2)
  return 0 if report["fits"] else 1


def main():
  app.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  main()
