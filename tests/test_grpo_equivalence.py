"""grpo and pg run the same estimator: on the same sampled rows, grpo's per-call gradient accumulation (each call's
weights scaled by rows-in-call / R, advantages per call) equals pg's one-batch gradient. So a systematic difference
in what they learn cannot come from the update's normalization; only from which rows they sample."""

import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))

import tiny  # noqa: E402

from dashjax.rl.advantages import group_advantages  # noqa: E402
from dashjax.rl.algorithms import GRPO, Sampled  # noqa: E402
from dashjax.rl.batching import Part  # noqa: E402
from dashjax.train.trainer import Trainer  # noqa: E402
from dashjax.train.update import UpdateResult  # noqa: E402


def test_grpo_per_call_gradient_equals_full_batch(tmp_path):
  c = tiny.get_config()
  c.rl.algo = "pg"
  t = Trainer(c, str(tmp_path))
  G, R = c.rl.samples_per_prompt, t.plan.rows_per_batch
  sc = t.collector.collect(t.sampler_params(), t.iterator.next_batch(), jax.random.key(3))
  # The random model never samples EOS: cut rows to uneven lengths (as ended rows are) so that normalizations differ.
  bt, N = sc.batch, sc.batch.completion_mask_RxN.shape[1]
  mask = np.arange(N)[None, :] < np.random.RandomState(0).randint(2, N + 1, R)[:, None]
  bt.completion_mask_RxN[:] = mask
  bt.valid_RxS[:, bt.prompt_len:] = mask
  bt.sampler_logprobs_RxN[:] = np.where(mask, bt.sampler_logprobs_RxN, 0.0)

  class Calls:  # the same rows, served to grpo's schedule one micro-batch-sized sampler call at a time
    def sample(self, examples, fold):
      rows = np.arange(examples[0] * G, (examples[-1] + 1) * G)
      return Sampled(sc.batch.take(rows), group_advantages(sc.rewards[rows], G, c.rl.advantage), sc.rewards[rows])

  for aggregation, exact in (("constant_length", True), ("seq_mean", True), ("token_mean", False)):
    t.updater.aggregation = aggregation
    adv = group_advantages(sc.rewards, G, c.rl.advantage)
    rows = np.arange(R)
    full = t.updater.gradient(t.params, None, [Part(sc.batch, adv, rows, rows)], UpdateResult())
    (parts,) = GRPO(c).updates(list(range(R // G)), Calls())  # one update, of R / micro_batch_size calls
    per_call = t.updater.gradient(t.params, None, parts, UpdateResult())
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
               zip(jax.tree.leaves(full), jax.tree.leaves(per_call)))
    scale = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(full))
    assert scale > 1e-4
    if exact:
      assert diff <= 2e-5 * scale, (diff, scale)
    else:  # token_mean: each call divides by its own token count, as standard implementations do
      assert diff > 1e-3 * scale, (diff, scale)
  t.close()
