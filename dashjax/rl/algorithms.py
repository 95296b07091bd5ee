"""The training algorithms as values: what is true of each, its own config checks, and the schedule of its updates.

`algorithm(config)` is the one place that reads `rl.algo` (and `mode`). The trainer runs every algorithm alike:

    for parts in algo.updates(examples, source):   # one optimizer update per item
      state = updater.update(state, parts)          # each part (rl.batching.Part): rows of one batch to backprop

`source.sample(examples, fold)` samples and scores the prompts and computes the rows' advantages (the trainer's
collect step); `source.gold(examples)` gives gold completions (SFT). An algorithm decides when to sample, which rows
each update backprops, over which rows the loss is normalized, and how many updates one batch gets. A new algorithm
is one class here and one entry in `ALGORITHMS`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Protocol

import numpy as np

from dashjax.config import ConfigError
from dashjax.rl.advantages import group_advantages, group_size_problem
from dashjax.rl.batching import Part, RolloutBatch, keep_mask


@dataclasses.dataclass(frozen=True)
class Sampled:
  """Rows of one collect step: sampled and scored (or gold), with their advantages."""

  batch: RolloutBatch
  adv_R: np.ndarray  # float32 advantages (SFT: 1)
  rewards_R: np.ndarray | None = None


class Source(Protocol):
  def sample(self, examples, fold: int | None = None) -> Sampled: ...

  def gold(self, examples) -> Sampled: ...


class Algorithm:
  """One sampling pass of P * G rows per batch, in calls of `sampling.batch_size` rows; one update of every row."""

  name = ""
  on_policy = True  # the loss's ratio is exactly 1: every update backprops rows sampled from the current policy
  filtering = False  # rows with |advantage| <= rl.filter_threshold skip backprop
  sampler_rows_field = "sampling.batch_size"  # the field that sets the rows of one sampler call
  own_fields: tuple[str, ...] = ()  # rl.* counts only this algorithm reads; the others refuse values above 1

  def __init__(self, config):
    self.config = config

  # --- what is true of it -----------------------------------------------------------------------------------

  @property
  def group_size(self) -> int:
    return int(self.config.rl.samples_per_prompt)

  @property
  def sampler_rows(self) -> int:
    return int(self.config.sampling.batch_size)

  def loss_fields(self) -> dict:
    """`LossConfig` keywords."""
    rl = self.config.rl
    return dict(temperature=self.config.sampling.temperature, on_policy=self.on_policy, clip_eps=rl.clip_eps,
                kl_beta=rl.kl_beta, kl_estimator=rl.kl_estimator)

  def loss_aggregation(self) -> str:
    return self.config.rl.loss_aggregation

  # --- its own config checks --------------------------------------------------------------------------------

  def check(self):
    """Raises ConfigError for settings this algorithm cannot use or that would train nothing."""
    rl, sp = self.config.rl, self.config.sampling
    problem = group_size_problem(rl.advantage, self.group_size)  # first: the root of any batch-size complaint
    if problem:
      raise ConfigError(problem)
    self.check_sampler_calls()
    if sp.temperature <= 0:
      raise ConfigError(f"sampling.temperature={sp.temperature} must be > 0 for RL (the learner's log-probs are of "
                        f"softmax(logits / T)); use eval.temperature=0 for greedy evaluation")
    for owner in ALGORITHMS.values():
      for field in owner.own_fields:
        if rl[field] > 1 and field not in self.own_fields:
          raise ConfigError(f"rl.{field}={rl[field]} > 1 needs rl.algo='{owner.name}'")

  def check_sampler_calls(self):
    """Each sampler call holds whole groups, and the calls make up the batch."""
    rl, G = self.config.rl, self.group_size
    sb, R = int(self.config.sampling.batch_size), int(rl.prompts_per_step) * G
    if sb % G:
      raise ConfigError(f"sampling.batch_size={sb} must be a multiple of rl.samples_per_prompt={G} so that each "
                        f"sampler call holds whole groups")
    if R % sb:
      raise ConfigError(f"sampling.batch_size={sb} must divide rl.prompts_per_step * rl.samples_per_prompt = "
                        f"{rl.prompts_per_step} * {G} = {R}; e.g. set sampling.batch_size={R} for one call per "
                        f"batch")

  # --- its updates ------------------------------------------------------------------------------------------

  def updates(self, examples, source: Source) -> Iterator[Iterable[Part]]:
    s = source.sample(examples)
    rows = np.arange(s.batch.num_rows)
    yield [Part(s.batch, s.adv_R, rows, rows)]


class PG(Algorithm):
  """Preemptive sampling alone: one sampling pass of P * G rows, one update of every row."""

  name = "pg"


class Dash(Algorithm):
  """pg, with rows whose |advantage| <= rl.filter_threshold dropped before backprop and the rest packed into fewer
  micro-batches; the loss is still normalized over every sampled row (rl.filter_normalization="sampled")."""

  name = "dash"
  filtering = True

  def updates(self, examples, source):
    s = source.sample(examples)
    kept = np.flatnonzero(keep_mask(s.adv_R, self.config.rl.filter_threshold))
    yield [Part(s.batch, s.adv_R, kept, np.arange(s.batch.num_rows))]


class GRPO(Algorithm):
  """The paper's standard implementation: the sampler is called once per micro-batch, with micro-batch-sized
  batches; each call is scored and backpropped before the next, and gradients accumulate to one update."""

  name = "grpo"
  sampler_rows_field = "train.micro_batch_size"

  @property
  def sampler_rows(self) -> int:
    return int(self.config.train.micro_batch_size)

  def check_sampler_calls(self):
    mb, G = int(self.config.train.micro_batch_size), self.group_size
    if mb % G:
      raise ConfigError(f"rl.algo='grpo' samples one micro-batch per sampler call, so train.micro_batch_size={mb} "
                        f"must be a multiple of rl.samples_per_prompt={G} (whole groups per call)")

  def updates(self, examples, source):
    per_call = self.sampler_rows // self.group_size
    R = len(examples) * self.group_size

    def parts():
      for i in range(0, len(examples), per_call):
        s = source.sample(examples[i:i + per_call], fold=i)
        rows = np.arange(s.batch.num_rows)
        # Normalized over the R rows of the whole update (exact for seq_mean/constant_length; token_mean uses this
        # call's token count, as standard implementations do, since later calls are not sampled yet).
        yield Part(s.batch, s.adv_R, rows, rows, scale=s.batch.num_rows / R)

    yield parts()


class PPOMulti(Algorithm):
  """One sampling pass, then rl.epochs_per_batch updates over all rows with clipped ratios against the sampler's
  log-probs."""

  name = "ppo_multi"
  on_policy = False
  own_fields = ("epochs_per_batch",)

  def updates(self, examples, source):
    s = source.sample(examples)
    rows = np.arange(s.batch.num_rows)
    for _ in range(int(self.config.rl.epochs_per_batch)):
      yield [Part(s.batch, s.adv_R, rows, rows)]


class PPOMini(Algorithm):
  """One sampling pass split into rl.updates_per_batch mini-batches of whole groups, one clipped update each."""

  name = "ppo_mini"
  on_policy = False
  own_fields = ("updates_per_batch",)

  def check(self):
    super().check()
    rl, mb = self.config.rl, int(self.config.train.micro_batch_size)
    P, U, R = int(rl.prompts_per_step), int(rl.updates_per_batch), int(rl.prompts_per_step) * self.group_size
    if P % U:
      raise ConfigError(f"rl.updates_per_batch={U} must divide rl.prompts_per_step={P} (each mini-batch holds "
                        f"whole groups)")
    if (R // U) % mb:
      raise ConfigError(f"train.micro_batch_size={mb} must divide the mini-batch of {R // U} rows "
                        f"(rl.prompts_per_step * rl.samples_per_prompt / rl.updates_per_batch)")

  def updates(self, examples, source):
    s = source.sample(examples)
    for rows in np.split(np.arange(s.batch.num_rows), int(self.config.rl.updates_per_batch)):
      yield [Part(s.batch, s.adv_R, rows, rows)]


class PODS(Algorithm):
  """Max-variance down-sampling (PODS, arXiv 2504.13818): sample G rows per prompt, backprop only the G / 2 of each
  group whose rewards vary most, with advantages and the loss's normalization over those rows alone. With
  train.share_prompts the learner packs groups whole (the other rows masked): backprop costs what pg's does."""

  name = "pods"

  def check(self):
    super().check()
    if self.group_size < 4:
      raise ConfigError(f"rl.algo='pods' keeps half of each group: rl.samples_per_prompt={self.group_size} must be "
                        f">= 4 so that at least 2 rows of a prompt are compared")

  def updates(self, examples, source):
    s = source.sample(examples)
    G = self.group_size
    m = G // 2
    adv = np.zeros(s.batch.num_rows, np.float32)
    rows = []
    for p, group in enumerate(s.rewards_R.reshape(-1, G)):
      order = np.argsort(group, kind="stable")
      # The largest-variance m of G values are the k largest and the m - k smallest, for some k.
      picks = [np.r_[order[:m - k], order[G - k:]] for k in range(m + 1)]
      pick = np.sort(max(picks, key=lambda i: float(np.var(group[i]))))
      adv[p * G + pick] = group_advantages(group[pick], m, self.config.rl.advantage)
      rows.append(p * G + pick)
    rows = np.concatenate(rows)
    yield [Part(s.batch, adv, rows, rows)]


class SFT(Algorithm):
  """Supervised fine-tuning on gold completions (mode="sft"): advantage 1 and the on-policy ratio make the policy
  gradient the likelihood's; the sampler runs only for evaluation."""

  name = "sft"

  @property
  def group_size(self) -> int:
    return 1  # one gold completion per prompt

  def loss_fields(self) -> dict:
    return dict(temperature=1.0, on_policy=True)  # the gold tokens' likelihood: no temperature, ratio or KL

  def loss_aggregation(self) -> str:
    return "token_mean"

  def check(self):
    P, mb = int(self.config.rl.prompts_per_step), int(self.config.train.micro_batch_size)
    if P % mb:
      raise ConfigError(f"mode='sft' trains on rl.prompts_per_step={P} gold completions per step; "
                        f"train.micro_batch_size={mb} must divide it")

  def updates(self, examples, source):
    g = source.gold(examples)
    rows = np.arange(g.batch.num_rows)
    yield [Part(g.batch, g.adv_R, rows, rows)]


ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (Dash, PG, GRPO, PPOMulti, PPOMini, PODS)}


def algorithm(config) -> Algorithm:
  """The algorithm the config names: SFT with mode="sft", else ALGORITHMS[rl.algo]; ConfigError for an unknown one."""
  name = config.rl.algo
  if name not in ALGORITHMS:
    raise ConfigError(f"rl.algo={name!r} is not one of {tuple(ALGORITHMS)}")
  return SFT(config) if config.mode == "sft" else ALGORITHMS[name](config)
