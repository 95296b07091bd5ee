"""One machine's reproducibility: a run's per-step metrics depend only on its config, not on what else the process
does (another Trainer stepped in between, evaluations, checkpoints). dash_vs_grpo.py relies on this: its
interleaved Trainers must each train exactly as they would alone."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import tiny  # noqa: E402

from dashjax.train.metrics import read_metrics  # noqa: E402
from dashjax.train.trainer import Trainer  # noqa: E402

STEPS = 4
TIMING = ("sample_s", "reward_s", "update_s", "step_s", "tokens_per_s")


def _strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _config(algo="dash"):
  c = tiny.get_config()
  c.rl.algo = algo
  c.train.num_steps = STEPS
  return c


def test_metrics_alone_beside_grpo_and_with_evals_and_checkpoints_agree(tmp_path):
  alone = Trainer(_config(), str(tmp_path / "alone"))
  ref = _strip([alone.train_step() for _ in range(STEPS)])
  alone.close()

  # Round-robin beside a grpo Trainer (its order alternating), as benchmarks/dash_vs_grpo.py steps them.
  dash, grpo = Trainer(_config(), str(tmp_path / "dash")), Trainer(_config("grpo"), str(tmp_path / "grpo"))
  beside = []
  for step in range(STEPS):
    if step % 2:
      beside.append(dash.train_step())
      grpo.train_step()
    else:
      grpo.train_step()
      beside.append(dash.train_step())
  dash.close(), grpo.close()

  # The loop with a held-out evaluation before training and every 2 steps, and a checkpoint every 2 steps.
  c = _config()
  c.eval.before, c.eval.every, c.train.checkpoint_every = True, 2, 2
  looped = Trainer(c, str(tmp_path / "loop"))
  looped.run(progress=False)
  looped.close()
  evals = open(tmp_path / "loop" / "eval.jsonl").read().splitlines()
  assert len(evals) == 2  # before training and after step 2 (the last step is not evaluated by `every`)
  assert sorted(os.listdir(tmp_path / "loop" / "checkpoints")) == ["2", "4"]

  assert len(ref) == STEPS and all(m["grad_norm"] is not None for m in ref)
  assert len({m["reward_mean"] for m in ref} | {m["grad_norm"] for m in ref}) > 2  # steps really differ
  assert _strip(beside) == ref
  assert _strip(read_metrics(str(tmp_path / "loop" / "metrics.jsonl"))) == ref
