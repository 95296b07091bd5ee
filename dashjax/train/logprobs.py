"""Completion log-probs for the learner, with the memory-saving options of `ComputeOptions` and position chunks.

The vocabulary projection is the largest tensor of a micro-step (M x N x V float32 logits, 1.2 GiB per row at 2048
tokens and Qwen's 151936 ids, and as much again for its gradient). With `chunk` > 0 the completion positions are
projected `chunk` at a time inside a rematerialized scan: only one chunk's logits exist at once, forward or
backward, and the result is the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dashjax.models.compute import PLAIN, ComputeOptions
from dashjax.models.transformer import PromptCache
from dashjax.rl.losses import token_logprobs


def completion_logprobs(model, tokens_MxS, valid_MxS, prompt_len: int, temperature: float, prompt_group: int = 1,
                        opts: ComputeOptions = PLAIN, chunk: int = 0):
  """Log-probs [M, N] of the completion tokens (the last N = S - prompt_len columns) under `model`.

  The last token is never an input (nothing is predicted from it) and logits are formed only for completion
  positions, which skips the vocabulary projection over the prompt. With `prompt_group` = g > 1, rows come in
  groups of g consecutive rows with the same prompt; see `_shared_prompt_hidden`.
  """
  if prompt_group > 1:
    h_MxNxD = _shared_prompt_hidden(model, tokens_MxS, valid_MxS, prompt_len, prompt_group, opts)
  else:
    h, _ = model.hidden(tokens_MxS[:, :-1], valid_MxS[:, :-1], opts=opts)
    h_MxNxD = h[:, prompt_len - 1:]
  return hidden_logprobs(model, h_MxNxD, tokens_MxS[:, prompt_len:], temperature, opts, chunk)


def hidden_logprobs(model, h_MxNxD, targets_MxN, temperature: float, opts: ComputeOptions = PLAIN, chunk: int = 0):
  """log softmax(logits / T) at the targets, from the last hidden states, `chunk` positions at a time (0: all)."""
  M, N, _ = h_MxNxD.shape
  if chunk <= 0 or chunk >= N:
    return token_logprobs(model.logits(h_MxNxD, opts), targets_MxN, temperature)
  n_chunks = -(-N // chunk)
  pad = n_chunks * chunk - N
  h = jnp.pad(h_MxNxD, ((0, 0), (0, pad), (0, 0)))
  t = jnp.pad(targets_MxN, ((0, 0), (0, pad)))
  h_CxMxKxD = h.reshape(M, n_chunks, chunk, -1).transpose(1, 0, 2, 3)
  t_CxMxK = t.reshape(M, n_chunks, chunk).transpose(1, 0, 2)

  weight = model.output_weight(opts)  # cast (and gathered) once; its gradient accumulates in compute dtype

  def one(_, xs):
    hc, tc = xs
    return None, token_logprobs(model.logits(hc, opts, weight), tc, temperature)

  # The body is rematerialized: backprop recomputes each chunk's logits instead of keeping all of them.
  _, lp_CxMxK = jax.lax.scan(jax.checkpoint(one), None, (h_CxMxKxD, t_CxMxK))
  return lp_CxMxK.transpose(1, 0, 2).reshape(M, -1)[:, :N]


def _shared_prompt_hidden(model, tokens_MxS, valid_MxS, prompt_len: int, group: int, opts: ComputeOptions):
  """Completion hidden states [M, N, D] with each group's prompt run once instead of once per row.

  The G samples of a prompt share it, so its forward (and backward) pass is computed for M / G rows; the
  completions then attend to their group's prompt KV and causally to their own tokens, exactly as in the
  sampler's decode. Gradients flowing into the prompt from all G rows are summed by autodiff, so the result is
  the per-row computation's, at a fraction of the cost when prompts are long next to completions.
  """
  M, S = tokens_MxS.shape
  n = S - prompt_len
  prompts_PxT = tokens_MxS[:, :prompt_len].reshape(M // group, group, prompt_len)[:, 0]
  pvalid_PxT = valid_MxS[:, :prompt_len].reshape(M // group, group, prompt_len)[:, 0]
  h_PxTxD, kvs = model.hidden(prompts_PxT, pvalid_PxT, opts=opts)
  # The prompt's last position predicts the first completion token, identically for the whole group.
  first_Mx1xD = jnp.repeat(h_PxTxD[:, -1:], group, axis=0)
  if n == 1:
    return first_Mx1xD
  inputs_MxT = tokens_MxS[:, prompt_len:-1]
  start_M = jnp.repeat(jnp.sum(pvalid_PxT, axis=-1, dtype=jnp.int32), group)
  positions_MxT = start_M[:, None] + jnp.arange(n - 1)[None, :]
  rest_MxTxD, _ = model.decode_hidden(inputs_MxT, positions_MxT, PromptCache(kvs, pvalid_PxT), None, 0, opts=opts)
  # One vocabulary projection over all N positions: joining hidden states (not logits) avoids a single-row
  # projection and copying [M, N, V] logits (and their gradient) through a concatenation.
  return jnp.concatenate([first_Mx1xD, rest_MxTxD], axis=1)
