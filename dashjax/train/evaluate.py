"""Held-out evaluation: mean@k (average reward over k samples) and pass@k with the unbiased estimator."""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from dashjax.sampling import SamplingConfig, make_sampler
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

  def __init__(self, graphdef, formatter, tokenizer, pool, reward_fn: str, *, samples: int, temperature: float,
               max_new_tokens: int, batch_size: int, eos_ids, pad_id: int, mesh, top_k=0, top_p=1.0,
               batching: dict | None = None):
    if temperature == 0 and samples > 1:
      raise ValueError(f"eval.samples={samples} with eval.temperature=0 would repeat one greedy answer; "
                       f"set eval.samples=1 or eval.temperature > 0")
    self.samples = samples
    rows = rows_per_call(batch_size, samples)
    # batching: SamplingConfig's continuous-batching fields (programs.batching_options); default continuous
    sampler = make_sampler(graphdef, SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, samples_per_prompt=samples,
        eos_ids=tuple(eos_ids), pad_id=pad_id, **(batching or {})))
    self.collector = RolloutCollector(sampler, formatter, tokenizer, pool, reward_fn, samples, rows, mesh)

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
