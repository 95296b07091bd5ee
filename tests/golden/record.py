"""Golden numbers: 3 training steps of every algorithm on configs/tiny.py, recorded from the code as it was before a
refactor and compared with the code after it by tests/test_golden.py.

    PYTHONPATH=. python tests/golden/record.py [CASE ...]    # rewrites tests/golden/tiny_3_steps.json

Rewrite the file only for a change meant to alter training numbers, and say so in the commit.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

from configs_for_tests import tiny_config  # noqa: E402
from eos_model import eos_likely_tiny  # noqa: E402

GOLDEN = os.path.join(HERE, "tiny_3_steps.json")
STEPS = 3
# Wall-clock fields, and those derived from them, are not behaviour.
TIMING = ("sample_s", "reward_s", "update_s", "step_s", "tokens_per_s")

# name -> (config overrides, EOS-likely model). The EOS cases have rows of uneven length, so the loss aggregations
# and normalizations weigh rows differently (with the plain tiny model every row runs to max_new_tokens).
CASES = {
    "dash": ({}, False),
    "pg": ({"rl.algo": "pg"}, False),
    "grpo": ({"rl.algo": "grpo"}, False),
    "ppo_multi": ({"rl.algo": "ppo_multi", "rl.epochs_per_batch": 2}, False),
    "ppo_mini": ({"rl.algo": "ppo_mini", "rl.updates_per_batch": 2}, False),
    "sft": ({"mode": "sft"}, False),
    "dash_kl": ({"rl.kl_beta": 0.1}, False),
    "dash_eos": ({}, True),
    "dash_eos_rloo_kept_seq_mean": ({"rl.advantage": "rloo", "rl.filter_normalization": "kept",
                                     "rl.loss_aggregation": "seq_mean"}, True),
    "grpo_eos_token_mean": ({"rl.algo": "grpo", "rl.loss_aggregation": "token_mean"}, True),
    "ppo_mini_eos": ({"rl.algo": "ppo_mini", "rl.updates_per_batch": 2, "rl.advantage": "mean"}, True),
}


def config_for(overrides: dict):
  return tiny_config(**overrides)


def run_case(name: str, workdir: str) -> list[dict]:
  """Per step: the trainer's metrics without timings, and |params - initial params| (how far training moved)."""
  from dashjax.train.trainer import Trainer

  overrides, eos = CASES[name]
  with jax.default_matmul_precision("highest"):  # whatever another test module set globally
    return _steps(Trainer(config_for(overrides), workdir, model_and_tokenizer=eos_likely_tiny() if eos else None))


def _steps(trainer) -> list[dict]:
  try:
    start = [np.asarray(x, np.float64) for x in jax.tree.leaves(trainer.params)]
    steps = []
    for _ in range(STEPS):
      m = {k: v for k, v in trainer.train_step().items() if k not in TIMING}
      now = [np.asarray(x, np.float64) for x in jax.tree.leaves(trainer.params)]
      m["params_moved"] = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(now, start))))
      steps.append(m)
    return steps
  finally:
    trainer.close()


def main(names):
  old = json.load(open(GOLDEN)) if os.path.exists(GOLDEN) else {}
  out = {"steps": STEPS, "cases": dict(old.get("cases", {}))}
  for name in names or list(CASES):
    out["cases"][name] = run_case(name, tempfile.mkdtemp(prefix=f"golden-{name}-"))
    print(name, json.dumps(out["cases"][name][-1]), flush=True)
  with open(GOLDEN, "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")


if __name__ == "__main__":
  main(sys.argv[1:])
