"""Sampling and scoring one batch of prompts: sampler calls of a fixed row count, then rewards on the host."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from dashjax.parallel.distributed import put, same_on_all_hosts, to_host
from dashjax.parallel.mesh import batch_sharding
from dashjax.rl.batching import RolloutBatch, rollout_batch


@dataclasses.dataclass
class Scored:
  batch: RolloutBatch
  rewards: np.ndarray  # [R] float32
  timed_out: np.ndarray  # [R] bool
  texts: list[str]
  truncated: np.ndarray  # [R] bool
  sampler_calls: int
  sample_s: float
  reward_s: float
  errors: np.ndarray | None = None  # [R] bool: the scorer raised (scored 0)
  first_error: str | None = None  # the first of those errors' messages

  @property
  def num_errors(self) -> int:
    return 0 if self.errors is None else int(self.errors.sum())

  @property
  def generated_tokens(self) -> int:
    return int(self.batch.completion_mask_RxN.sum())


def reward_target(example, reward_fn: str):
  return example.meta if reward_fn == "gym" else example.answer


class RolloutCollector:
  """Turns prompts into scored rollouts with `ceil(prompts / prompts_per_call)` sampler calls."""

  def __init__(self, sampler, formatter, tokenizer, pool, reward_fn: str, group_size: int, rows_per_call: int, mesh):
    self.sampler, self.formatter, self.tokenizer, self.pool = sampler, formatter, tokenizer, pool
    self.reward_fn, self.G, self.mesh = reward_fn, group_size, mesh
    self.prompts_per_call = rows_per_call // group_size
    self.slot_steps = self.wasted_slot_steps = 0  # running totals over the collector's life

  def sample(self, params, examples, key):
    tokens, valid = self.formatter.encode(examples)
    calls = -(-len(examples) // self.prompts_per_call)
    outs = []
    for c in range(calls):
      sl = slice(c * self.prompts_per_call, (c + 1) * self.prompts_per_call)
      t, v = tokens[sl], valid[sl]
      r = self.sampler(params, put(t, batch_sharding(self.mesh, 2)), put(v, batch_sharding(self.mesh, 2)),
                       jax.random.fold_in(key, c))
      outs.append(jax.tree.map(to_host, r))
      stats = self.sampler.stats(outs[-1])  # decode compute: slot-steps run, and those spent on rows that had ended
      self.slot_steps += stats.slot_steps
      self.wasted_slot_steps += stats.wasted_slot_steps
    return tokens, valid, outs

  def collect(self, params, examples, key) -> Scored:
    t0 = time.perf_counter()
    tokens, valid, outs = self.sample(params, examples, key)
    sample_s = time.perf_counter() - t0
    parts = [rollout_batch(tokens[c * self.prompts_per_call:(c + 1) * self.prompts_per_call],
                           valid[c * self.prompts_per_call:(c + 1) * self.prompts_per_call], self.G,
                           o.tokens_BxN, o.logprobs_BxN, o.lengths_B) for c, o in enumerate(outs)]
    batch = RolloutBatch.concat(parts)
    lengths = np.concatenate([o.lengths_B for o in outs])
    completions = np.concatenate([o.tokens_BxN for o in outs])
    truncated = np.concatenate([o.truncated_B for o in outs])
    t0 = time.perf_counter()
    texts = self.tokenizer.batch_decode([row[:n] for row, n in zip(completions, lengths)], skip_special_tokens=True)
    targets = [reward_target(ex, self.reward_fn) for ex in examples for _ in range(self.G)]
    scored = self.pool.score(self.reward_fn, texts, targets)
    rewards = same_on_all_hosts(np.asarray(scored.rewards, np.float32))
    reward_s = time.perf_counter() - t0
    return Scored(batch, rewards, np.asarray(scored.timed_out), texts, truncated, len(outs), sample_s, reward_s,
                  np.asarray(scored.errors, bool), getattr(scored, "first_error", None))
