"""dashjax Trainer (JAX, CPU): seconds per optimizer update.  Run with dashjax's venv (/work/main/.venv).

  python run_dashjax.py SPEC.json                            (spec fields: peers_common.py)
  python run_dashjax.py --check-logits MODEL_DIR REF.npz KEY   max |logits - transformers logits| as JSON

Modes = rl.algo (one optimizer update = P prompts * G samples, backprop in micro-batches of `micro_batch` rows):
  grpo  the paper's standard GRPO: one sampler call per micro-batch, gradients accumulated to one update
  pg    preemptive sampling: all P*G completions in one sampler call, then the same micro-batched backprop;
        no filtering, so it does the same work as the peers
  dash  pg + gradient filtering: rows with |advantage| <= 0.1 are dropped before backprop (fewer micro-steps)
Settings follow the peers: float32, KL off (no reference model), on-policy (no old-logp pass), constant-length
(Dr. GRPO) loss aggregation, AdamW with global-norm clipping 1.0, temperature from the spec, no top-k/top-p.
dashjax's own defaults are kept where they are dashjax features (the sampler shares each prompt's KV across its G
samples: sampling.share_prefix=True; backprop runs each prompt once per group: train.share_prompts=True).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers_common import Clock, dist_version, finish, load_spec, run_driver  # noqa: E402

MODES = ("grpo", "pg", "dash")


def make_config(spec: dict):
  from dashjax.config import base_config

  c = base_config()
  c.model.source = spec["model"]
  c.data.source = "file"
  c.data.path = spec["prompts"]
  # dashjax needs a held-out set; a separate file keeps the training prompts exactly those the peers see.
  c.data.heldout_path = spec["heldout_prompts"]
  c.data.problem_field = "prompt"  # already chat-formatted: fed verbatim, as to TRL and tunix
  c.data.template = "raw"
  c.data.task = "contains"
  c.data.train_size = 0  # all of them
  c.data.heldout_size = 0
  c.data.max_prompt_tokens = spec["max_prompt_tokens"]
  c.reward.fn = "peers_common:contains_gold"
  c.reward.workers = 0  # score in-process, like the peers
  c.rl.algo = spec["mode"]
  c.rl.prompts_per_step = spec["prompts_per_update"]
  c.rl.samples_per_prompt = spec["G"]
  c.rl.kl_beta = 0.0
  c.sampling.batch_size = spec["rows_per_update"]  # pg/dash: one call per update (grpo uses micro_batch)
  c.sampling.max_new_tokens = spec["max_new_tokens"]
  c.sampling.temperature = spec["temperature"]
  c.sampling.top_k, c.sampling.top_p = 0, 1.0
  c.train.micro_batch_size = spec["micro_batch"]
  c.train.num_steps = spec["warmup_updates"] + spec["updates"]
  c.train.learning_rate = spec["learning_rate"]
  c.train.seed = spec["seed"]
  c.train.checkpoint_every = 0
  c.eval.before = c.eval.after = False
  c.eval.num_prompts, c.eval.batch_size = 8, 8
  return c


def check_logits(folder: str, ref_npz: str, key: str):
  import jax.numpy as jnp
  import numpy as np

  from dashjax.models.loading import load_model

  ref = np.load(ref_npz)
  ids, want = ref["ids"], ref[key]
  model, _ = load_model(folder)
  got = np.asarray(model(jnp.asarray(ids)), np.float64)
  err = np.abs(got - want)
  print("CHECK " + json.dumps({"model": folder, "key": key, "max_abs_err": float(err.max()),
                               "max_abs_logit": float(np.abs(want).max()),
                               "argmax_agree": float((got.argmax(-1) == want.argmax(-1)).mean())}), flush=True)


def main():
  spec = load_spec(MODES)
  clock = Clock()
  import jax

  import dashjax
  from dashjax.train.trainer import Trainer

  workdir = tempfile.mkdtemp(prefix="dashjax-bench-")
  trainer = Trainer(make_config(spec), workdir)
  setup_s = clock.lap()
  marks, steps = [], []
  for _ in range(trainer.config.train.num_steps):
    m = trainer.train_step()  # returns after the update's parameters are ready (it reads the grad norm)
    marks.append(clock.lap())
    steps.append({k: m[k] for k in ("kept_fraction", "micro_steps", "sampler_calls", "sample_s", "update_s",
                                    "reward_mean", "response_len", "update_skipped")})
  trainer.close()
  warm = spec["warmup_updates"]
  timed = steps[warm:]
  finish(spec, "dashjax", spec["mode"], marks, setup_s,
         {"dashjax": getattr(dashjax, "__version__", "?"), "jax": jax.__version__, "flax": dist_version("flax")},
         {"steps": steps,
          "kept_fraction_mean": sum(s["kept_fraction"] for s in timed) / max(len(timed), 1),
          "micro_steps_mean": sum(s["micro_steps"] for s in timed) / max(len(timed), 1),
          "sample_s_mean": sum(s["sample_s"] for s in timed) / max(len(timed), 1),
          "update_s_mean": sum(s["update_s"] for s in timed) / max(len(timed), 1)})
  shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  run_driver(main, check_logits)
