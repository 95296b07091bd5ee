"""The update phase: filter, weight, pack and accumulate rows, then apply one optimizer step."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from dashjax.parallel.distributed import put
from dashjax.parallel.mesh import batch_sharding
from dashjax.rl.algorithms import Part
from dashjax.rl.batching import pack_micro_batches, token_weights
from dashjax.train.learner import STAT_KEYS


@dataclasses.dataclass
class UpdateResult:
  params: object
  opt_state: object
  micro_steps: int = 0
  updates: int = 0
  skipped: int = 0  # updates skipped because no row was kept
  grad_norm: float = float("nan")
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

  def weights(self, batch, rows_kept: np.ndarray, rows_counted: np.ndarray) -> np.ndarray:
    """Per-token weights over the batch. Normalization "sampled" counts every row the update sampled, so dropping
    zero-advantage rows leaves the other rows' weights, and hence the update, unchanged; "kept" counts only the
    kept rows (a larger step when many rows are filtered)."""
    counted = np.zeros(batch.num_rows)
    counted[rows_counted if self.normalization == "sampled" else rows_kept] = 1.0
    return token_weights(batch.completion_mask_RxN, counted, self.aggregation)

  def accumulate(self, params, grads, ref_params, batch, adv, weights, rows, result: UpdateResult):
    """Adds the gradient of the given rows' terms to `grads`, running ceil(len(rows) / M) micro-steps."""
    mbs = pack_micro_batches(batch, adv, weights, rows, self.mb, self.learner.prompt_group)
    pending = []
    for i in range(mbs.num_micro):
      mb = {k: put(v, batch_sharding(self.mesh, v.ndim)) for k, v in mbs[i].items()}
      grads, stats = self.learner.micro_step(params, grads, ref_params, mb)
      pending.append(stats)  # read after the loop: a read here would stall dispatch of the next micro-step
    for stats in pending:
      result.add_stats(stats)
    result.micro_steps += mbs.num_micro
    return grads

  def update(self, params, opt_state, ref_params, parts, result: UpdateResult):
    """One optimizer update from the rows of `parts` (an algorithm's `Part`s; a skipped update, said so in the
    result, when no part has a row). Drawing the next part may sample (grpo): that time is not the update's."""
    grads = None
    for part in parts:
      t0 = time.perf_counter()
      if len(part.rows):
        grads = self.learner.zero_grads(params) if grads is None else grads
        weights = self.weights(part.batch, part.rows, part.counted) * part.scale
        grads = self.accumulate(params, grads, ref_params, part.batch, part.adv_R, weights, part.rows, result)
      result.seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    if grads is None:
      result.skipped += 1
    else:
      params, opt_state, norm = self.learner.apply(params, opt_state, grads)
      result.grad_norm = float(norm)
      result.updates += 1
    result.params, result.opt_state = params, opt_state
    jax.block_until_ready(params)
    result.seconds += time.perf_counter() - t0
    return params, opt_state

  def step(self, params, opt_state, ref_params, batch, adv, rows, rows_counted, result: UpdateResult):
    """One optimizer update from `rows` of one batch (or a skipped update when `rows` is empty)."""
    part = Part(batch, adv, np.asarray(rows), np.asarray(rows_counted))
    return self.update(params, opt_state, ref_params, [part], result)
