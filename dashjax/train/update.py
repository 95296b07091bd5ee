"""The update recipe, one for the trainer and the benchmarks: an algorithm's parts (rows of a batch to backprop)
-> weights and packing (`rl.batching.prepare`) -> the compiled micro-steps -> one optimizer step."""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax

from dashjax.parallel.distributed import put
from dashjax.parallel.mesh import batch_sharding
from dashjax.rl.algorithms import algorithm
from dashjax.rl.batching import Part, prepare
from dashjax.train.learner import STAT_KEYS


class TrainState(NamedTuple):
  params: object
  opt_state: object
  ref_params: object = None  # the KL reference (the initial policy); None when rl.kl_beta == 0


@dataclasses.dataclass
class UpdateResult:
  """What a step's updates did, summed over them."""

  micro_steps: int = 0
  updates: int = 0
  skipped: int = 0  # updates skipped because no row was kept
  grad_norm: float = float("nan")  # of the last update
  stats: dict = dataclasses.field(default_factory=lambda: {k: 0.0 for k in STAT_KEYS})
  seconds: float = 0.0

  def add_stats(self, stats: dict):
    for k in STAT_KEYS:
      self.stats[k] += float(stats[k])


class Updater:
  """Drives the compiled micro-step over host-packed micro-batches of one fixed shape."""

  def __init__(self, learner, mesh, micro_batch_size: int, aggregation: str, normalization: str):
    self.learner, self.mesh, self.mb = learner, mesh, micro_batch_size
    self.aggregation, self.normalization = aggregation, normalization

  @classmethod
  def from_config(cls, config, plan, learner, mesh) -> "Updater":
    return cls(learner, mesh, plan.micro_batch_size, algorithm(config).loss_aggregation(),
               config.rl.filter_normalization)

  def micro_batches(self, part: Part):
    return prepare(part, self.mb, aggregation=self.aggregation, normalization=self.normalization,
                   group=self.learner.prompt_group)

  def gradient(self, params, ref_params, parts, result: UpdateResult):
    """The accumulated gradient of the parts' rows (None when no part has a row). Drawing the next part may sample
    (grpo): that time is not counted in `result.seconds`."""
    grads = None
    for part in parts:
      t0 = time.perf_counter()
      if len(part.rows):
        mbs = self.micro_batches(part)
        grads = self.learner.zero_grads(params) if grads is None else grads
        pending = []
        for i in range(mbs.num_micro):
          mb = {k: put(v, batch_sharding(self.mesh, v.ndim)) for k, v in mbs[i].items()}
          grads, stats = self.learner.micro_step(params, grads, ref_params, mb)
          pending.append(stats)  # read after the loop: a read here would stall dispatch of the next micro-step
        for stats in pending:
          result.add_stats(stats)
        result.micro_steps += mbs.num_micro
      result.seconds += time.perf_counter() - t0
    return grads

  def update(self, state: TrainState, parts, result: UpdateResult) -> TrainState:
    """One optimizer update from the parts' rows, or a skipped update (said so in the result) when there are none."""
    grads = self.gradient(state.params, state.ref_params, parts, result)
    t0 = time.perf_counter()
    if grads is None:
      result.skipped += 1
    else:
      params, opt_state, norm = self.learner.apply(state.params, state.opt_state, grads)
      state = state._replace(params=params, opt_state=opt_state)
      result.grad_norm = float(norm)
      result.updates += 1
    jax.block_until_ready(state.params)
    result.seconds += time.perf_counter() - t0
    return state
