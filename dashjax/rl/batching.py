"""Host-side assembly of learner batches: rows from rollouts, exact loss weights, filtering and packing.

Because every rollout of an update is known before backprop, each token's weight in the full-batch loss is computed
here once. A micro-batch's loss is then its exact share of the full-batch loss, so accumulating micro-batch
gradients reproduces the full-batch gradient whatever the micro-batch size, and dropping rows changes nothing but
those rows' own terms (with normalization="sampled").
"""

from __future__ import annotations

import dataclasses

import numpy as np

LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "constant_length")
NORMALIZATIONS = ("sampled", "kept")


@dataclasses.dataclass
class RolloutBatch:
  """R = P * G sampled rows, prompt-major, as host numpy arrays."""

  tokens_RxS: np.ndarray  # int32 prompt (left-padded to Tp) followed by the completion (right-padded to N)
  valid_RxS: np.ndarray  # bool: real prompt tokens and generated tokens up to each row's length
  completion_mask_RxN: np.ndarray  # float32: 1 on generated tokens (the EOS included)
  sampler_logprobs_RxN: np.ndarray  # float32 log-probs under the distribution the sampler drew from
  prompt_len: int  # Tp, the padded prompt width

  @property
  def num_rows(self):
    return self.tokens_RxS.shape[0]

  def take(self, rows) -> "RolloutBatch":
    return RolloutBatch(self.tokens_RxS[rows], self.valid_RxS[rows], self.completion_mask_RxN[rows],
                        self.sampler_logprobs_RxN[rows], self.prompt_len)

  @staticmethod
  def concat(parts: list["RolloutBatch"]) -> "RolloutBatch":
    return RolloutBatch(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                          ("tokens_RxS", "valid_RxS", "completion_mask_RxN", "sampler_logprobs_RxN")),
                        parts[0].prompt_len)


def rollout_batch(prompt_tokens_PxT, prompt_valid_PxT, group_size, completion_BxN, logprobs_BxN,
                  lengths_B) -> RolloutBatch:
  """Joins each prompt (repeated for its G rows) with its sampled completions."""
  completion = np.asarray(completion_BxN, np.int32)
  n = completion.shape[1]
  mask = (np.arange(n)[None, :] < np.asarray(lengths_B)[:, None])
  tokens = np.concatenate([np.repeat(np.asarray(prompt_tokens_PxT, np.int32), group_size, 0), completion], axis=1)
  valid = np.concatenate([np.repeat(np.asarray(prompt_valid_PxT, bool), group_size, 0), mask], axis=1)
  logprobs = np.where(mask, np.asarray(logprobs_BxN, np.float32), 0.0).astype(np.float32)
  return RolloutBatch(tokens, valid, mask.astype(np.float32), logprobs, prompt_tokens_PxT.shape[1])


def token_weights(mask_RxN: np.ndarray, counted_R: np.ndarray, aggregation: str) -> np.ndarray:
  """Each token's weight in the update's loss; rows outside `counted_R` get 0.

  token_mean: 1 / (tokens of the counted rows); seq_mean: 1 / (row length * counted rows);
  constant_length: 1 / (N * counted rows), the Dr. GRPO / paper choice, independent of response lengths.
  """
  if aggregation not in LOSS_AGGREGATIONS:
    raise ValueError(f"rl.loss_aggregation={aggregation!r} is not one of {LOSS_AGGREGATIONS}")
  mask = mask_RxN * counted_R[:, None]
  rows = max(int(counted_R.sum()), 1)
  if aggregation == "token_mean":
    w = mask / max(float(mask.sum()), 1.0)
  elif aggregation == "seq_mean":
    w = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1.0) / rows
  else:
    w = mask / (mask.shape[1] * rows)
  return w.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Part:
  """Rows of one batch that one optimizer update backprops (an algorithm yields these; see rl/algorithms.py)."""

  batch: RolloutBatch
  adv_R: np.ndarray
  rows: np.ndarray  # rows backpropped
  counted: np.ndarray  # rows the loss is normalized over with normalization="sampled"
  scale: float = 1.0  # this batch's share of the update's loss (grpo: rows of the call / rows of the update)


def prepare(part: Part, micro_batch_size: int, *, aggregation: str, normalization: str = "sampled",
            group: int = 1) -> "MicroBatches":
  """A part's learner inputs in one call: each token's exact weight in the update's loss, then the rows packed.

  normalization "sampled" counts `part.counted` (every row the update sampled), so dropping zero-advantage rows
  leaves the other rows' weights, and hence the update, unchanged; "kept" counts only the rows backpropped (a larger
  step when many rows are filtered)."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"rl.filter_normalization={normalization!r} is not one of {NORMALIZATIONS}")
  counted = np.zeros(part.batch.num_rows)
  counted[part.counted if normalization == "sampled" else part.rows] = 1.0
  weights = token_weights(part.batch.completion_mask_RxN, counted, aggregation) * part.scale
  return pack_micro_batches(part.batch, part.adv_R, weights, part.rows, micro_batch_size, group)


def keep_mask(adv_R: np.ndarray, threshold: float | None) -> np.ndarray:
  """Gradient filtering: keep rows with |advantage| > threshold (None keeps every row)."""
  if threshold is None:
    return np.ones(adv_R.shape, bool)
  return np.abs(adv_R) > threshold


@dataclasses.dataclass
class MicroBatches:
  """Fixed-shape micro-batches stacked on a leading axis: arrays [num_micro, M, ...]."""

  tokens: np.ndarray
  valid: np.ndarray
  weights: np.ndarray  # per-token loss weights, 0 on padding rows
  adv: np.ndarray
  row_mask: np.ndarray  # False on rows added only to fill the last micro-batch
  old_logprobs: np.ndarray

  @property
  def num_micro(self):
    return self.tokens.shape[0]

  @staticmethod
  def spec(micro_batch_size: int, prompt_len: int, new_tokens: int) -> dict:
    """One micro-batch as the learner's micro-step receives it, in shapes and dtypes only ({field: (shape,
    dtype)}): what the fit check compiles the step for, kept beside the packing that makes it."""
    M, S = micro_batch_size, prompt_len + new_tokens
    shapes = {"tokens": ((M, S), np.int32), "valid": ((M, S), np.bool_), "weights": ((M, new_tokens), np.float32),
              "adv": ((M,), np.float32), "row_mask": ((M,), np.bool_), "old_logprobs": ((M, new_tokens), np.float32)}
    assert list(shapes) == [f.name for f in dataclasses.fields(MicroBatches)]
    return shapes

  def __getitem__(self, i) -> dict:
    return {f.name: getattr(self, f.name)[i] for f in dataclasses.fields(self)}


def pack_micro_batches(batch: RolloutBatch, adv_R, weights_RxN, rows_R, micro_batch_size: int,
                       group: int = 1) -> MicroBatches:
  """Packs the given rows into ceil(len/M) micro-batches of exactly M rows.

  The last one is filled with copies of real rows whose weights and advantages are 0 and whose row_mask is False,
  so shapes never change (no recompilation) and the filler contributes exactly nothing.

  With `group` = g > 1 (the learner runs each prompt once per group of g rows), rows are packed as whole groups of
  g consecutive batch rows: a group with any row given is packed entire, its other rows masked like filler. When
  filtering drops whole groups (binary rewards: a group is dropped exactly when all its rewards are equal) this
  costs nothing.
  """
  rows_R = np.asarray(rows_R, np.int64)
  if group > 1:
    if micro_batch_size % group:
      raise ValueError(f"micro_batch_size={micro_batch_size} must be a multiple of the prompt group {group}")
    groups = np.unique(rows_R // group)
    idx = (groups[:, None] * group + np.arange(group)[None, :]).reshape(-1)
    prompts = batch.tokens_RxS[idx, :batch.prompt_len].reshape(len(groups), group, -1)
    if not (prompts == prompts[:, :1]).all():
      raise ValueError(f"rows packed in groups of {group} must share their prompt (rows must be prompt-major)")
    real = np.isin(idx, rows_R)
  else:
    idx, real = rows_R, np.ones(len(rows_R), bool)
  num_micro = -(-len(idx) // micro_batch_size)
  fill = num_micro * micro_batch_size - len(idx)
  filler = idx[:group] if len(idx) else np.zeros(group, np.int64)
  idx = np.concatenate([idx, np.tile(filler, fill // group)])
  real = np.concatenate([real, np.zeros(fill, bool)])

  def stack(x):
    return x.reshape(num_micro, micro_batch_size, *x.shape[1:])

  return MicroBatches(
      tokens=stack(batch.tokens_RxS[idx]), valid=stack(batch.valid_RxS[idx]),
      weights=stack(np.where(real[:, None], weights_RxN[idx], 0.0).astype(np.float32)),
      adv=stack(np.where(real, adv_R[idx], 0.0).astype(np.float32)), row_mask=stack(real),
      old_logprobs=stack(batch.sampler_logprobs_RxN[idx]))
