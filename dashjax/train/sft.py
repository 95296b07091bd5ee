"""Supervised fine-tuning on gold completions, the paper's SFT baseline, through the same learner.

With advantage 1 and the on-policy ratio, the policy-gradient loss's gradient is exactly the gradient of the
negative log-likelihood of the given tokens, so SFT reuses the compiled micro-step, micro-batching and optimizer.
"""

from __future__ import annotations

import numpy as np

from dashjax.rl.batching import RolloutBatch


def sft_target(example, solution_field: str) -> str:
  """The text to imitate: the example's worked solution when the data has one, else its gold answer."""
  solution = example.meta.get(solution_field) if solution_field else None
  return str(solution) if solution else str(example.answer)


def sft_batch(formatter, tokenizer, examples, max_new_tokens: int, solution_field: str, eos_id: int | None):
  """(RolloutBatch of prompt + gold completion rows, number of completions cut at max_new_tokens)."""
  tokens, valid = formatter.encode(examples)
  n = max_new_tokens
  completion = np.full((len(examples), n), formatter.pad_id, np.int32)
  mask = np.zeros((len(examples), n), np.float32)
  cut = 0
  for i, ex in enumerate(examples):
    ids = tokenizer(sft_target(ex, solution_field), add_special_tokens=False)["input_ids"]
    if eos_id is not None:
      ids = ids + [eos_id]
    if len(ids) > n:
      ids, cut = ids[:n], cut + 1
    completion[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1.0
  batch = RolloutBatch(np.concatenate([tokens, completion], 1).astype(np.int32),
                       np.concatenate([valid, mask > 0], 1), mask, np.zeros_like(mask), tokens.shape[1])
  return batch, cut
