"""Held-out evaluation: mean@k (average reward over k samples) and pass@k with the unbiased estimator."""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from dashjax.train.rollouts import RolloutCollector


def pass_at_k(n: int, c: int, k: int) -> float:
  """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def rows_per_call(batch_size: int, samples: int) -> int:
  """Rows per evaluation sampler call: whole groups of `samples`, at least one group."""
  return max(samples, (batch_size // samples) * samples)


class Evaluator:
  """Samples `samples` completions per held-out prompt in fixed-shape calls and scores them."""

  def __init__(self, sampler, formatter, tokenizer, pool, reward_fn: str, *, rows: int, mesh):
    """`sampler`: the evaluation's (`programs.build`), drawing `sampler.cfg.samples_per_prompt` per prompt; `rows`
    per call (`rows_per_call`)."""
    self.samples = sampler.cfg.samples_per_prompt  # > 1 at temperature 0 is refused by config.validate
    self.collector = RolloutCollector(sampler, formatter, tokenizer, pool, reward_fn, self.samples, rows, mesh)

  def __call__(self, params, examples, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    per_call = self.collector.prompts_per_call
    padded = list(examples) + [examples[0]] * (-len(examples) % per_call)  # fixed shapes: no recompilation
    scored = self.collector.collect(params, padded, jax.random.key(seed))
    correct = (scored.rewards[:len(examples) * self.samples] >= 1.0).reshape(len(examples), self.samples)
    rewards = scored.rewards[:len(examples) * self.samples].reshape(len(examples), self.samples)
    per_prompt = rewards.mean(axis=1)
    out = {"accuracy": float(per_prompt.mean()),
           "stderr": float(per_prompt.std(ddof=1) / math.sqrt(len(examples))) if len(examples) > 1 else float("nan"),
           "num_prompts": len(examples), "samples": self.samples,
           "timed_out": int(scored.timed_out.sum()), "reward_errors": scored.num_errors,
           "first_reward_error": scored.first_error, "seconds": time.perf_counter() - t0}
    k = 1
    while k <= self.samples:
      out[f"pass@{k}"] = float(np.mean([pass_at_k(self.samples, int(c), k) for c in correct.sum(axis=1)]))
      k *= 2
    out["texts"] = scored.texts[:len(examples) * self.samples]
    return out
