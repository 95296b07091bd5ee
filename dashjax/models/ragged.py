"""Decode attention for rows at different steps: the prompt cache indexed per row, generated keys read up to the
longest live row only.

One query per row (the token being decoded). Row s reads:
  * its prompt's KV, row `prompt_idx_S[s]` of the prompt cache (the G samples of a prompt share one copy), masked by
    that prompt's valid positions; with no index, rows are grouped over prompts as in the static sampler;
  * its own generated keys 0 .. limit_S[s] - 1 from a [S, K, N, D] cache. The cache is read in blocks of `block` keys
    with an online softmax, and only ceil(max(limit_S) / block) blocks are read: early in a generation, or after the
    long rows are gone, attention no longer pays for all N slots.

The static sampler's plain attention (`attention.attend`) is the reference these are tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dashjax.models.attention import NEG_INF
from dashjax.models.compute import einsum_f32


def _merge(carry, s_SxKxRxL, mask_SxL, v_SxKxLxD):
  """Folds one masked block of scores into the running (max, denominator, weighted values)."""
  m, l, acc = carry
  s = jnp.where(mask_SxL[:, None, None, :], s_SxKxRxL, NEG_INF)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1))
  p = jnp.where(mask_SxL[:, None, None, :], jnp.exp(s - m_new[..., None]), 0.0)
  correction = jnp.exp(m - m_new)
  l = l * correction + jnp.sum(p, axis=-1)
  acc = acc * correction[..., None] + einsum_f32("skrl,skld->skrd", p.astype(v_SxKxLxD.dtype), v_SxKxLxD)
  return m_new, l, acc


def _prompt_softmax(s_SxKxRxT, valid_SxT):
  """Unnormalized weights of the prompt keys and their running (max, denominator)."""
  s = jnp.where(valid_SxT[:, None, None, :], s_SxKxRxT, NEG_INF)
  m = jnp.max(s, axis=-1)
  p = jnp.where(valid_SxT[:, None, None, :], jnp.exp(s - m[..., None]), 0.0)
  return p, (m, jnp.sum(p, axis=-1))


def ragged_decode_attention(q_SxKxRxD, prompt_k_PxKxTxD, prompt_v_PxKxTxD, prompt_valid_PxT, prompt_idx_S,
                            k_SxKxNxD, v_SxKxNxD, limit_S, scale: float, block: int = 128):
  """Softmax attention of one query per row over its prompt and its first limit_S generated keys -> [S, K, R, D] f32.

  prompt_idx_S=None means row s reads prompt s // (S // P) (the static grouping, no gather). Every row must have at
  least one valid prompt key (left-padded prompts are never empty).
  """
  S, K, R, D = q_SxKxRxD.shape
  N = k_SxKxNxD.shape[2]
  P, _, T, _ = prompt_k_PxKxTxD.shape
  if prompt_idx_S is None:  # row s reads prompt s // (S // P): grouped scores, the prompt KV read once per prompt
    G = S // P
    qg = q_SxKxRxD.reshape(P, G, K, R, D)
    s = einsum_f32("pgkrd,pktd->pgkrt", qg, prompt_k_PxKxTxD.astype(qg.dtype)).reshape(S, K, R, T) * scale
    valid = jnp.repeat(prompt_valid_PxT, G, axis=0)
    p, init = _prompt_softmax(s, valid)
    acc = einsum_f32("pgkrt,pktd->pgkrd", p.reshape(P, G, K, R, T).astype(prompt_v_PxKxTxD.dtype),
                     prompt_v_PxKxTxD).reshape(S, K, R, D)
  else:  # any prompt per row: gathered per row (a [S, K, T, D] copy per layer)
    kp = jnp.take(prompt_k_PxKxTxD, prompt_idx_S, axis=0)
    vp = jnp.take(prompt_v_PxKxTxD, prompt_idx_S, axis=0)
    valid = jnp.take(prompt_valid_PxT, prompt_idx_S, axis=0)
    s = einsum_f32("skrd,sktd->skrt", q_SxKxRxD, kp.astype(q_SxKxRxD.dtype)) * scale
    p, init = _prompt_softmax(s, valid)
    acc = einsum_f32("skrt,sktd->skrd", p.astype(vp.dtype), vp)
  carry = (*init, acc)

  bk = min(block, N)
  num_blocks = (jnp.max(limit_S) + bk - 1) // bk  # dynamic: blocks past every live row are never read

  def body(i, carry):
    # The last block is shifted back to stay inside the cache when bk does not divide N; keys it shares with the
    # previous block are masked out so that none is counted twice.
    start = jnp.minimum(i * bk, N - bk)
    kb = jax.lax.dynamic_slice_in_dim(k_SxKxNxD, start, bk, axis=2)
    vb = jax.lax.dynamic_slice_in_dim(v_SxKxNxD, start, bk, axis=2)
    idx = start + jnp.arange(bk)
    mask = (idx[None, :] >= i * bk) & (idx[None, :] < limit_S[:, None])
    sb = einsum_f32("skrd,skld->skrl", q_SxKxRxD, kb.astype(q_SxKxRxD.dtype)) * scale
    return _merge(carry, sb, mask, vb)

  _, l, acc = jax.lax.fori_loop(0, num_blocks, body, carry)
  return acc / l[..., None]
